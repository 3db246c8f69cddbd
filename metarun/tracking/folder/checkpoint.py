"""Checkpoints: `last.pt` (everything needed to resume) and `best.pt` (weights of the best validation).

Writes are atomic (temporary file + `os.replace`), so a kill during a save leaves the previous file.
Files hold only tensors, numbers, strings, lists and dicts, so they load with `weights_only=True`.
Every file records the run's resolved config; `resume_state` refuses a `last.pt` written by a run
whose config differs in a section that shapes the model or the episode stream (`RESUME_KEYS`).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
from pathlib import Path

import torch

from metarun.errors import CheckpointError
from metarun.files import atomic_write
from metarun.tracking.folder.run_dir import config_diff, describe

FORMAT_VERSION = 1

# Config sections a resumed run must share with the checkpoint it resumes from.
RESUME_KEYS = ("seed", "data", "encoder", "learner", "sampler")


class Checkpointer:
    def __init__(self, run_dir: str | Path, config: dict | None = None):
        self.dir = Path(run_dir) / "checkpoints"
        self.last, self.best = self.dir / "last.pt", self.dir / "best.pt"
        self.config = config or {}

    def save(self, path: Path, state: dict, die_midway: bool = False) -> None:
        """Write `state` atomically. `die_midway` (crash tests: tests/kill_callback.py): the
        process is killed after half of the file is written."""
        state = {"format_version": FORMAT_VERSION, **state, "config": self.config}

        def write(f) -> None:
            if not die_midway:
                return torch.save(state, f)
            buffer = io.BytesIO()
            torch.save(state, buffer)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        try:
            atomic_write(path, write)
        except (OSError, RuntimeError) as e:
            if not disk_full(e, path):
                raise
            needed = sum(t.numel() * t.element_size() for t in _tensors(state))
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(
                f"cannot write {path}: the disk holding it is full ({free / 2**20:.1f} MiB free, about "
                f"{needed / 2**20:.1f} MiB needed). The previous {path.name} is kept; free some space and start "
                f"the run again: it resumes from its last checkpoint."
            ) from None

    def resume_state(self) -> dict | None:
        """`last.pt` when there is one and this run's config may continue it, else None."""
        if not self.last.exists():
            return None
        saved = self.load(self.last)
        # compared as run folders compare configs: options added later count at their old behaviour
        diff = {k: v for k, v in config_diff(saved.get("config", {}), self.config).items()
                if k.split(".")[0] in RESUME_KEYS}
        if diff:
            raise CheckpointError(
                f"cannot resume from {self.last}: it was written by a run with a different config "
                f"({describe(diff).replace(' there,', ' in the checkpoint,')}). The file was kept; rerun with the "
                f"same settings, or use a new hydra.run.dir."
            )
        return saved

    def load(self, path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, pickle error, wrong file type ...
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}). The file was kept; "
                f"move it away to start this run from scratch, or use a new hydra.run.dir."
            ) from None
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} is not a metarun checkpoint of format {FORMAT_VERSION}. The file was "
                f"kept; move it away to start from scratch, or use a new hydra.run.dir."
            )
        return state


def disk_full(error: BaseException, path: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or torch's serializer failing on a short write
    ("unexpected pos ...") where the disk has less free than a checkpoint's worth."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "unexpected pos" in str(error) or shutil.disk_usage(path.parent).free < 2**20


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
