"""run(cfg) -> results: build the run's parts, claim its folder, train, test, write results.json.
Testable without the CLI: `run(cfg, run_dir)`."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from metarun import hydra_state
from metarun.assembly import Components, build_components, learner_report, train_inputs, training_episodes
from metarun.config import build, resolved
from metarun.distributed import Dist
from metarun.files import write_json
from metarun.tracking.folder import episodes
from metarun.tracking.folder import run_info
from metarun.tracking.folder.checkpoint import Checkpointer
from metarun.tracking.writers.metrics import MetricsWriter
from metarun.tracking.tables.results import results_record
from metarun.tracking.folder.run_dir import RunDir, claim_folder
from metarun.tracking.writers.trackers import Tracker, build_trackers, check_available, close_trackers, hparams_of
from metarun.trainer import TrainState, Trainer

log = logging.getLogger("metarun")


def run(cfg: DictConfig, run_dir: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Build everything (so every bad value is refused before the run folder is touched), claim the
    folder (a lock, and the check that this run may use what it holds: see tracking/folder/run_dir.py), then
    train, test and write results.json and DONE. `run_dir` defaults to Hydra's output folder;
    `overrides` (the command line, for the HParams row) to Hydra's."""
    started = time.time()
    config = resolved(cfg)
    check_available(config["logger"])
    trainer: Trainer = build(cfg.trainer, "trainer")
    dist = trainer.join_processes()  # rank 0 of 1 unless started by torchrun
    under_hydra = run_dir is None  # the CLI: Hydra chose the folder (an explicit run_dir ignores Hydra's state)
    if under_hydra:
        overrides = hydra_state.overrides()
    folder = RunDir(shared_folder(run_dir, dist))
    c = build_components(cfg, config, trainer, dist)
    claim = claim_folder(folder, config, dist)
    trackers: list[Tracker] = []
    try:
        if dist.main:
            folder.prepare(claim, config, overrides if under_hydra else None)
            write_json(folder / "run_info.json", run_info.collect(str(trainer.device)) | {"world_size": dist.world})
        with folder.log_file() if dist.main else contextlib.nullcontext():
            log.info("run dir %s (%s)", folder.path, claim.describe())
            if dist.main:
                trackers = build_trackers(config["logger"], config, folder.path,
                                          hydra_state.sweep_dir() if under_hydra else None)
            try:
                state, scores, report = fit_and_test(c, folder.path, trackers, overrides or [])
            except BaseException:
                close_trackers(trackers, lambda t: t.fail())
                raise
            results = results_record(cfg, c.learner, c.data, c.tests[0], train_inputs(c, state), state, scores,
                                     report, time.time() - started, folder.path, c.unlabelled)
            if dist.main:
                folder.write_results(results, config)
                close_trackers(trackers, lambda t: t.finish(results, folder.path))
        return results
    finally:
        folder.unlock()


def fit_and_test(c: Components, run_dir: Path, trackers: list[Tracker] = (), overrides: list[str] = ()
                 ) -> tuple[TrainState, dict, dict | None]:
    """Train (resuming when `run_dir` holds a checkpoint), reload the best checkpoint, test it.
    Returns the training state, every score (test and the best validation) and the learner's report.
    `overrides`: the command line's, for the TensorBoard HParams row."""
    trainer, learner, logger = c.trainer, c.learner, c.config["logger"]
    writer = (MetricsWriter(run_dir, logger.get("tensorboard", True), logger.get("jsonl", True), trackers)
              if c.dist.main else MetricsWriter(run_dir, False, False))
    ckpt = Checkpointer(run_dir, c.config)
    try:
        state = trainer.fit(learner, training_episodes(c), c.val, ckpt, writer, c.callbacks)
        # No training steps: nothing selects a checkpoint, so the validation classes are not evaluated
        # (they would cost encoding and episodes whose scores nothing uses); test the model as it is.
        val_scores = {}
        if state.best_step >= 0:
            learner.load_trained_state(ckpt.load(ckpt.best)["model"])
            val_scores = state.best_val
        test_scores = trainer.test(learner, c.tests)
        if c.dist.main:
            episodes.write(run_dir, test_scores)  # what each test episode asked and got (metarun-compare pairs them)
        writer.write_scores(state.step, test_scores, replace=True)
        if logger.get("hparams", True):
            writer.write_hparams(hparams_of(c.config, list(overrides)), [f"{k}/acc" for k in test_scores])
        report = learner_report(learner, c.encoder, c.data.test, trainer.device)
    finally:
        writer.close()
    return state, {**test_scores, **val_scores}, report


def shared_folder(run_dir: str | Path | None, dist: Dist) -> Path:
    """Rank 0's run folder, for every rank (only rank 0 writes). Under torchrun Hydra made one folder
    per rank; a non-zero rank removes what Hydra put in its own (its log file, then the folder if it
    is empty), never anything else."""
    own = Path(run_dir or hydra_state.output_dir() or os.getcwd())
    shared = Path(dist.broadcast(str(own)))
    if own != shared and run_dir is None and hydra_state.output_dir() is not None:
        for log_file in own.glob("*.log"):
            log_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            own.rmdir()  # only if empty
    return shared
