"""run(cfg) -> results: seed, instantiate, fit, test, write results.json. Testable without the CLI."""

from __future__ import annotations

import inspect
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metarun.data.collate import EpisodeDataset
from metarun.data.sampler import EpisodeSampler
from metarun.errors import CheckpointError, ConfigError, MetarunError
from metarun.evaluate import Evaluator, Protocol
from metarun.tracking import run_info
from metarun.tracking.checkpoint import Checkpointer
from metarun.tracking.files import write_json
from metarun.tracking.metrics import MetricsWriter
from metarun.trainer import Trainer

log = logging.getLogger("metarun")

# Config sections a resumed run must share with the checkpoint it resumes from.
RESUME_KEYS = ("seed", "data", "encoder", "learner", "sampler")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(node: DictConfig, group: str, **kwargs):
    """Instantiate a config group's `_target_`, turning config mistakes into clear errors."""
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not (group == "learner" and k == "name")}
    try:
        return instantiate(params, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, MetarunError):
            raise cause from None
        if isinstance(cause, TypeError) and ("keyword argument" in str(cause) or "required positional" in str(cause)):
            accepted = list(inspect.signature(get_class(params["_target_"])).parameters)
            raise ConfigError(
                f"the {group} config does not fit {params['_target_']}: {cause}. Options it accepts: "
                f"{', '.join(a for a in accepted if a not in kwargs)}."
            ) from None
        raise


def protocols(node: DictConfig, seed: int) -> list[Protocol]:
    shots = node.shots if OmegaConf.is_list(node.shots) else [node.shots]
    return [Protocol(int(node.n_way), int(k), int(node.n_query), int(node.episodes), seed) for k in shots]


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    started = time.time()
    run_dir = Path(run_dir or _hydra_output_dir() or os.getcwd())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").unlink(missing_ok=True)  # never leave a stale success behind a failing rerun
    config = OmegaConf.to_container(cfg, resolve=True)

    trainer: Trainer = build(cfg.trainer, "trainer")
    seed_everything(cfg.seed)
    write_json(run_dir / "run_info.json", run_info.collect(str(trainer.device)))
    data = build(cfg.data, "data")
    encoder = build(cfg.encoder, "encoder")
    learner = build(cfg.learner, "learner", encoder=encoder)
    s = cfg.sampler
    sampler = EpisodeSampler(data.train, s.n_way, s.k_shot, s.n_query, seed=cfg.seed, role="training")
    ev = cfg.eval
    val = Evaluator(data.val, protocols(ev.val, ev.seed), "val", ev.batch_size, ev.val.max_per_class, trainer.progress)
    test = Evaluator(data.test, protocols(ev.test, ev.seed), "test", ev.batch_size, ev.test.max_per_class, trainer.progress)
    log.info("data %s: %d train / %d val / %d test classes (%d / %d / %d examples); run dir %s",
             data.name, len(data.train.classes), len(data.val.classes), len(data.test.classes),
             len(data.train), len(data.val), len(data.test), run_dir)

    writer = MetricsWriter(run_dir, **cfg.logger)
    ckpt = Checkpointer(run_dir)
    episodes = EpisodeDataset(sampler, encoder.tokenize, trainer.max_steps * trainer.meta_batch)
    try:
        state = trainer.fit(learner, episodes, lambda lr: val(lr, trainer.device, trainer.autocast_dtype),
                            ckpt, writer, config, lambda saved: check_resumable(saved, config, ckpt.last))
        if state.best_step >= 0:
            learner.load_state_dict(ckpt.load(ckpt.best)["model"])
            val_scores = state.best_val
        else:  # no training steps: evaluate the encoder as it is
            val_scores = val(learner, trainer.device, trainer.autocast_dtype)
        learner.to(trainer.device)
        test_scores = test(learner, trainer.device, trainer.autocast_dtype)
        writer.write(state.step, {f"{k}/{m}": v[m] for k, v in test_scores.items() for m in ("acc", "ci95")})
    finally:
        writer.close()

    results = {
        "learner": cfg.learner.name,
        "data": data.name,
        "encoder": cfg.encoder.name,
        "seed": cfg.seed,
        "results": {**test_scores, **val_scores},
        "best_step": state.best_step,
        "steps": state.step,
        "wall_time_s": round(time.time() - started, 1),
        "run_dir": str(run_dir),
    }
    write_json(run_dir / "results.json", results)
    log.info("results (%s, %.0f s):\n%s", run_dir, results["wall_time_s"], format_results(results["results"]))
    return results


def format_results(scores: dict) -> str:
    return "\n".join(f"  {k:<20} {v['acc']:6.2f} ± {v['ci95']:.2f}  ({v['episodes']} episodes)" for k, v in scores.items())


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
