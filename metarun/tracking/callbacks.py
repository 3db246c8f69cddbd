"""Hydra callbacks: at the end of every sweep, tables and an accuracy-against-K plot of its results,
and a list of failed jobs."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metarun.tracking.plots import plot_sweep
from metarun.tracking.table import load_runs, write_tables

log = logging.getLogger("metarun")


class SweepSummary(Callback):
    """Writes table.md / table.csv / table.tex into the sweep folder (rows x cols as `metarun-table`)."""

    def __init__(self, rows: str = "learner", cols: str = "data,setting", agg: str = "ci"):
        self.rows, self.cols, self.agg = rows.split(","), cols.split(","), agg

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        md = write_tables([sweep], sweep, self.rows, self.cols, self.agg)
        if md:
            log.info("sweep results (%s/table.md):\n%s", sweep, md)
            plot_sweep(load_runs([sweep]), sweep)
        failed = sorted(p.parent.name for p in sweep.glob("*/FAILED"))
        if failed:
            log.error("%d job(s) failed (see FAILED in each folder; relaunch the same command with "
                      "hydra.sweep.dir=%s to retry them and skip the finished ones): %s", len(failed), sweep,
                      ", ".join(failed))
