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

