"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class MetarunError(Exception):
    """A problem the user can fix (bad config, missing file, bad data). The message says how."""


class ConfigError(MetarunError):
    pass


class DataError(MetarunError):
    pass


class CheckpointError(MetarunError):
    pass


class NonFiniteLossError(MetarunError):
    pass


class RunDirError(MetarunError):
    """The run folder holds work this run may not touch, or another process is using it."""


def check_choice(option: str, value: object, choices) -> None:
    """Stop with `option=value is not valid; choose one of: ...` unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{option}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}.")

