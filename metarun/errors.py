"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""

import errno
import sys
from collections.abc import Callable

# OSErrors the user can fix (a full disk, a folder they may not write): one paragraph and exit 2
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


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


def write_error_message(e: OSError, what: str = "the run folder", hint: str = "hydra.run.dir=...") -> str:
    """`cannot write PATH: the disk is full (...)` for an OSError the user can fix."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a part of the path is a file, not a folder",
           }.get(e.errno, "permission was denied")
    return (f"cannot write {e.filename or what}: {why} ({e.strerror}). Free space or choose a folder you can "
            f"write ({hint}); finished files were left as they were.")


def tool_main(prog: str, body: Callable[[], object], hint: str = "--out") -> int:
    """Runs a command-line tool's `body` -> its exit status: the int it returns, else 0; a MetarunError
    or a fixable OSError (a read-only or full output folder) becomes `PROG: error: ...` on stderr and 2,
    never a traceback."""
    try:
        status = body()
        return status if isinstance(status, int) else 0
    except MetarunError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        print(f"{prog}: error: {write_error_message(e, 'the output', hint)}", file=sys.stderr)
    return 2


def check_choice(option: str, value: object, choices) -> None:
    """Stop with `option=value is not valid; choose one of: ...` unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{option}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}.")



def check_int(option: str, value: object, low: int = 1, null: str | None = None) -> None:
    """Stop with `option=value is not valid; it must be a whole number of at least LOW` unless `value`
    is one (booleans are not); `null`, when given, says what null means and allows it."""
    if value is None and null is not None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{option}={value!r} is not valid; it must be a whole number of at least {low}"
                          + (f" (or null for {null})." if null else "."))


def check_number(option: str, value: object, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, null: str | None = None) -> None:
    """Stop unless `value` is a finite number within [low, high] (an end left out is unbounded; `*_open`
    excludes it); `null`, when given, says what null means and allows it."""
    import math

    if value is None and null is not None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    inside = number and (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high))
    if not inside:
        if high is None:
            what = "a positive number" if low == 0 and low_open else f"a number {'>' if low_open else '>='} {low}"
        elif low is None:
            what = f"a number {'<' if high_open else '<='} {high}"
        else:
            what = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{option}={value!r} is not valid; it must be {what}" + (f" (or null for {null})." if null
                                                                                   else "."))
