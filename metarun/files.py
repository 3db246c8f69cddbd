"""Atomic file writes: write a temporary file in the same folder, fsync, then `os.replace`. The file
gets the mode a plain `open` would give it (0666 less the umask), not mkstemp's 0600. Ctrl-C and
SIGTERM that arrive during a write take effect when it ends: raised inside a library's writer
(torch.save's zip writer), the interrupt would be replaced by the writer's own error. JSON files are
strict: NaN and infinities are written as null."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM received inside are delivered when it ends, to the handlers in place before
    (main thread only: elsewhere Python delivers no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    before = {s: signal.signal(s, lambda signum, frame: received.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(received):
            handler = before[signum]
            if callable(handler):
                handler(signum, None)  # Ctrl-C: KeyboardInterrupt; metarun's SIGTERM handler likewise
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None],
                 check: Callable[[Path], object] | None = None) -> None:
    """`write(f)` into a temporary file beside `path`; `check(tmp_path)` (if given) may refuse it by
    raising; then the file takes `path`'s place. On any error the temporary file is removed."""
    with signals_deferred():
        _atomic_write(Path(path), write, check)


def _atomic_write(path: Path, write, check) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj: object) -> object:
    """`obj` with every non-finite float (NaN, inf) replaced by None, so that it is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: object) -> None:
    text = json.dumps(strict(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
