"""Checkpoints: `last.pt` (everything needed to resume) and `best.pt` (weights of the best validation).

Writes are atomic (temporary file + `os.replace`), so a kill during a save leaves the previous file.
Files hold only tensors, numbers, strings, lists and dicts, so they load with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metarun.errors import CheckpointError
from metarun.tracking.files import atomic_write

FORMAT_VERSION = 1


class Checkpointer:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "checkpoints"
        self.last, self.best = self.dir / "last.pt", self.dir / "best.pt"

    def save(self, path: Path, state: dict) -> None:
        state = {"format_version": FORMAT_VERSION, **state}
        atomic_write(path, lambda f: torch.save(state, f))

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
