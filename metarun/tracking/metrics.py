"""Metrics writers: one JSON object per logged step in `metrics.jsonl`, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """`write(step, {"train/loss": ...})`. Keys are slash-namespaced; values must be numbers."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, jsonl: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl" if jsonl else None
        self.run_dir, self.use_tensorboard = Path(run_dir), tensorboard
        self._tb = None

    def resume_at(self, step: int) -> None:
        """Drop lines logged after `step` (work after the last checkpoint is redone on resume)."""
        if self.path is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if self.use_tensorboard:
            self._tensorboard(purge_step=step + 1)

    def write_scores(self, step: int, scores: dict[str, dict]) -> None:
        """Evaluation scores {"val/5way_5shot": {"acc", "ci95", ...}} as `val/5way_5shot/acc`, `.../ci95`."""
        self.write(step, {f"{k}/{m}": v[m] for k, v in scores.items() for m in ("acc", "ci95")})

    def write(self, step: int, metrics: dict[str, float | None]) -> None:
        """One line; a value that is missing or not finite (a CI of one episode) is written as null."""
        values = {k: float(v) if v is not None and math.isfinite(float(v)) else None for k, v in metrics.items()}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}, allow_nan=False) + "\n")
        if self.use_tensorboard:
            tb = self._tensorboard()
            for k, v in values.items():
                if v is not None:
                    tb.add_scalar(k, v, step)
            tb.flush()

    def _tensorboard(self, purge_step: int | None = None):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_step)
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a kill


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete line of a metrics.jsonl (a line cut short by a kill is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]
