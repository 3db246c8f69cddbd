"""Metrics writers: one JSON object per logged step in `metrics.jsonl`, mirrored to TensorBoard and to
the run's experiment trackers (tracking/writers/trackers.py)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from metarun.files import atomic_write

log = logging.getLogger("metarun")


class MetricsWriter:
    """`write(step, {"train/loss": ...})`. Keys are slash-namespaced; values must be numbers."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, jsonl: bool = True, trackers=()):
        self.path = Path(run_dir) / "metrics.jsonl" if jsonl else None
        self.run_dir, self.use_tensorboard, self.trackers = Path(run_dir), tensorboard, list(trackers)
        self._tb = None

    def resume_at(self, step: int) -> None:
        """Drop lines logged after `step` (work after the last checkpoint is redone on resume)."""
        if self.path is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if self.use_tensorboard:
            self._tensorboard(purge_step=step + 1)

    def write_scores(self, step: int, scores: dict[str, dict], replace: bool = False) -> None:
        """Evaluation scores {"val/5way_5shot": {"acc", "ci95", ...}} as `val/5way_5shot/acc`, `.../ci95`.
        `replace`: a line of the same scores at the same step is dropped first. The final test scores
        need it: a run killed after logging them and resumed tests again at that step, and every line
        must be in the file once (validation lines after the last checkpoint are cut by `resume_at`)."""
        metrics = {f"{k}/{m}": v[m] for k, v in scores.items() for m in ("acc", "ci95")}
        if replace:
            self._drop(step, set(metrics))
        self.write(step, metrics)

    def _drop(self, step: int, keys: set[str]) -> None:
        if self.path is None or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if not (_step_of(line) == step and set(json.loads(line)) - {"step"} == keys)]
        if len(kept) != len(lines):
            atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))

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
        for tracker in list(self.trackers):
            try:
                tracker.log_metrics(step, {k: v for k, v in values.items() if v is not None})
            except Exception as e:  # a tracker never stops the run: metrics.jsonl has every line
                log.warning("%s stopped receiving metrics (%s: %s); metrics.jsonl keeps them", tracker.name,
                            type(e).__name__, e)
                self.trackers.remove(tracker)

    def write_hparams(self, hparams: dict, metric_tags: list[str]) -> None:
        """TensorBoard's HParams row of this run: `hparams` and the final values of `metric_tags`."""
        if self.use_tensorboard:
            from metarun.tracking.writers.trackers import write_hparams

            write_hparams(self._tensorboard(), hparams, metric_tags)

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
