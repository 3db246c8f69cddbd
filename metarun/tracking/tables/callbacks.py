"""Hydra callbacks: before a run or sweep, a check that its folder can be made; at the end of every
sweep, tables and an accuracy-against-K plot of its results, and a list of failed jobs."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from metarun.tracking.tables.plots import plot_sweep
from metarun.tracking.tables.results import BUILTIN, load_runs
from metarun.tracking.tables.table import split_rows, write_tables

log = logging.getLogger("metarun")

failed_jobs: list[str] = []  # folders of the failed jobs of the last sweep (the CLI then exits with 3)
AGGREGATED = ("seed", "data.split")  # runs that differ only in these share a cell (mean over them)


def swept_keys(task_overrides) -> list[str]:
    """Table keys of the values a sweep varies: `learner=a,b` -> learner, `sampler.k_shot=1,5` ->
    sampler.k_shot, `data@eval.test.data=a,b` -> test_data. Other config-group choices are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        if not o.is_sweep_override():
            continue
        if o.package == "eval.test.data":
            keys.append("test_data")
        elif o.package is None and ("." in o.key_or_group or o.key_or_group in BUILTIN):
            keys.append(o.key_or_group)
    return keys


class OutputFolder(Callback):
    """Before Hydra makes the run (or sweep) folder: `a/../b` is read as `b` (Hydra would make an empty
    `a` first), and a folder that cannot be made (a read-only place, a parent that is a file) stops the
    run with one paragraph and exit status 2 instead of Hydra's mkdir traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_output_folder(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_output_folder(config, "sweep")


def check_output_folder(config: DictConfig, mode: str) -> None:
    key = f"hydra.{mode}.dir"
    given = str(config.hydra[mode].dir)
    folder = os.path.normpath(given)
    if folder != given:
        with open_dict(config):
            config.hydra[mode].dir = folder
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    problem = ("is a file, not a folder" if not existing.is_dir() else
               "cannot be written (a read-only file system or no permission)" if not os.access(existing, os.W_OK)
               else None)
    if problem:
        print(f"metarun: error: cannot make the {mode} folder {folder}: {existing} {problem}. Choose a folder you can "
              f"write ({key}=...).", file=sys.stderr)
        sys.exit(2)


class SweepSummary(Callback):
    """Writes table.md / table.csv / table.tex into the sweep folder (rows x cols as `metarun-table`).
    rows=auto: `learner` plus every key the sweep varies that is not a column or aggregated over
    (seeds and class splits are averaged within a cell)."""

    def __init__(self, rows: str = "auto", cols: str = "test_data,setting", agg: str = "ci"):
        self.rows, self.cols, self.agg = rows.split(","), cols.split(","), agg

    def table_rows(self, task_overrides, runs: list[dict]) -> list[str]:
        if self.rows != ["auto"]:
            return self.rows
        skip = {*self.cols, *AGGREGATED, "learner"}
        if "test_data" in self.cols and all(r.get("data") == r.get("test_data") for r in runs):
            skip.add("data")  # the same as the test_data column
        return ["learner", *dict.fromkeys(k for k in swept_keys(task_overrides) if k not in skip)]

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        runs = load_runs([sweep])
        rows = split_rows(runs, self.table_rows(config.hydra.overrides.task, runs), self.cols)
        md = write_tables(runs, sweep, rows, self.cols, self.agg)
        if md:
            log.info("sweep results (%s/table.md):\n%s", sweep, md)
            plot_sweep(runs, sweep, lines=rows, agg=self.agg)
        failed = sorted(p.parent.name for p in sweep.glob("*/FAILED"))
        failed_jobs[:] = failed
        if failed:
            log.error("%d job(s) failed (see FAILED in each folder; relaunch the same command with "
                      "hydra.sweep.dir=%s to retry them and skip the finished ones): %s", len(failed), sweep,
                      ", ".join(failed))
