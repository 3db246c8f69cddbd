"""The parts of a run, built from its config and checked against each other before anything is
written: data, encoder (with its stored tokenisation), learner, training episodes, evaluators (with
the feature cache), and the choice of training inputs (text, or cached features of a frozen encoder)."""

from __future__ import annotations

import inspect
import json
import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metarun.config import build, import_target, without
from metarun.data.collate import EpisodeDataset, FeatureEpisodeDataset
from metarun.data.dataset import DataSplits, FewShotDataset
from metarun.data.unlabelled import UnlabelledText
from metarun.distributed import Dist
from metarun.errors import ConfigError, check_choice, check_int
from metarun.evaluate import Evaluator, HeldOutTasks, build_evaluator
from metarun.evaluate.common import encode_examples, evaluating
from metarun.evaluate.feature_cache import FeatureCache
from metarun.evaluate.out_of_scope import OOS, with_out_of_scope
from metarun.callbacks import Callback, build_callbacks, default_callbacks
from metarun.learners.base import Learner
from metarun.learners.objectives import build_objectives
from metarun.models.base import Encoder
from metarun.trainer import TrainState, Trainer

log = logging.getLogger("metarun")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_learner(node: DictConfig, encoder: Encoder, train_classes: list[str], objectives=None,
                  refiners=None) -> Learner:
    """The learner of `node`; its name is the config's (`learner=anil` is "anil", a MAML policy). A
    learner whose constructor takes `train_classes` gets them. The config groups `objective` and
    `refiner` (mappings name -> node) are built and attached to it."""
    cls = import_target(node._target_, "learner")
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise ConfigError(f"learner._target_={node._target_} is not a metarun Learner (metarun.learners.base.Learner).")
    if node.get("support_tuning_steps"):
        raise ConfigError("learner.support_tuning_steps (test-time fine-tuning on each episode's support set) was "
                          "removed with the third redesign: it did not help (docs/benchmarks.md). Evaluate this run's "
                          "checkpoint without it, or use an older metarun.")
    classes = {"train_classes": train_classes} if "train_classes" in inspect.signature(cls).parameters else {}
    learner = build(without(node, "name"), "learner", encoder=encoder, **classes)
    learner.name = node.name
    refiners = [build(r, f"refiner.{k}") for k, r in (refiners or {}).items()]
    return learner.attach(build_objectives(objectives, learner), refiners)


def nota_learners() -> str:
    """The learner options whose config has a `nota` key (the choices an error names)."""
    from metarun.paths import config_dir

    return ", ".join(sorted(p.stem for p in (config_dir() / "learner").glob("*.yaml")
                            if "\nnota:" in "\n" + p.read_text()))


def check_nota(cfg: DictConfig, learner: Learner) -> None:
    """None-of-the-above queries need a learner that predicts NOTA as class N."""
    rates = {"sampler.na_rate": cfg.sampler.get("na_rate", 0), "eval.val.na_rate": cfg.eval.val.get("na_rate", 0),
             "eval.test.na_rate": cfg.eval.test.get("na_rate", 0)}
    for key, value in [*rates.items(), ("eval.test.oos_rate", cfg.eval.test.get("oos_rate", 0))]:
        check_int(key, value, 0)  # a bad value is named as such before what it would ask of the learner
    asked = [f"{k}={v}" for k, v in rates.items() if v]
    if asked and not learner.nota:
        raise ConfigError(f"{', '.join(asked)} adds none-of-the-above queries, but this learner does not predict "
                          f"NOTA; set learner.nota=true (learner={nota_learners()}).")
    test = cfg.eval.test
    if test.get("oos_rate", 0) and test.get("reject", "nota") == "nota" and not learner.nota:
        raise ConfigError(f"eval.test.oos_rate={test.oos_rate} adds out-of-scope queries, which eval.test.reject=nota "
                          f"leaves to the learner, but this learner does not predict NOTA: set learner.nota=true "
                          f"(learner={nota_learners()}), or eval.test.reject=threshold (any "
                          f"learner: a threshold on its largest class probability, chosen on validation episodes).")


NA_SOURCES = ("classes", "oos_train")


def training_sampler(cfg: DictConfig, data: DataSplits):
    """The training episodes; `sampler.na_source=oos_train` draws their none-of-the-above queries from
    the data's training out-of-scope pool (CLINC150's oos_train) instead of classes outside the episode."""
    params = OmegaConf.to_container(cfg.sampler, resolve=True)
    source = params.pop("na_source", "classes")
    check_choice("sampler.na_source", source, NA_SOURCES)
    dataset, extra = data.train, {}
    if source == "oos_train" and params.get("na_rate", 0):
        if "train" not in data.oos or not len(data.oos["train"]):
            raise ConfigError(f"sampler.na_source=oos_train draws none-of-the-above queries from the training "
                              f"out-of-scope pool, but data {data.name!r} has none (data=clinc_oos has oos_train; "
                              f"a table's data.oos_label rows are split between validation and test); use "
                              f"sampler.na_source=classes.")
        dataset, extra = with_out_of_scope(data.train, data.oos["train"]), {"na_class": OOS}
        log.info("training none-of-the-above queries: %d out-of-scope examples (%s)", len(data.oos["train"]),
                 data.oos["train"].source)
    return build(params, "sampler", dataset=dataset, seed=cfg.seed, role="training", **extra)


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
    callbacks: list[Callback] = field(default_factory=default_callbacks)  # best checkpoint, early stopping
    feature_cache: FeatureCache | None = None  # features on disk, when the encoder's weights do not train
    on_features: bool = False  # the training episodes are cached features of the frozen encoder
    unlabelled: UnlabelledText | None = None  # target-domain text the objectives read


def build_components(cfg: DictConfig, config: dict, trainer: Trainer, dist: Dist) -> Components:
    seed_everything(cfg.seed)
    data = build(cfg.data, "data")
    sentences = (data.train, data.val, data.test) if cfg.get("token_cache", True) else ()
    encoder = build(cfg.encoder, "encoder", pretokenize=sentences)  # tokenised once, into the token cache
    if encoder.untrained_tokens and trainer.max_steps == 0:
        log.warning("encoder=%s adds entity-marker tokens whose embeddings are untrained, and trainer.max_steps=0 "
                    "leaves them so: entity-start features of a frozen encoder read them. Train, or start the markers "
                    "from punctuation (encoder.marker_init=punct), or use encoder.pooling=mean.", encoder.name)
    learner = build_learner(cfg.learner, encoder, data.train.classes, cfg.get("objective"), cfg.get("refiner"))
    check_nota(cfg, learner)
    if trainer.max_steps > 0 and not any(p.requires_grad for p in learner.parameters()):
        raise ConfigError(f"learner={learner.name} with encoder.freeze=true has no parameter to train; test the frozen "
                          f"encoder with trainer.max_steps=0, or train it (encoder.freeze=false), or pick a learner "
                          f"with a head of its own (relation, snail, siamese, induction, anil).")
    sampler = training_sampler(cfg, data)
    cache = open_feature_cache(cfg, encoder, trainer)
    val = build_evaluator(cfg.eval, "val", data, trainer.progress, dist, cache)
    tests = [build_evaluator(cfg.eval, "test", data, trainer.progress, dist, cache)]
    if learner.task_heads and data.heldout:
        tests.append(HeldOutTasks(data.heldout, cfg.eval.batch_size, trainer.progress, cache))
    for evaluator in (val, *tests):
        evaluator.check(learner)
    unlabelled = build_unlabelled(cfg.get("unlabelled"), data, (val, *tests), learner)
    for objective in learner.objectives:
        objective.use_run(unlabelled, trainer.max_steps * trainer.meta_batch)
    learner.class_text = {**data.class_names, **{k: v for e in (val, *tests) for k, v in e.class_names.items()}}
    episodes = EpisodeDataset(sampler, encoder.tokenize, trainer.max_steps * trainer.meta_batch)
    named = (" (named after its file; data.name=... names it otherwise)"
             if str(OmegaConf.to_container(cfg.data, resolve=False).get("name", "")).startswith("${stem:") else "")
    # the classes the test episodes come from: another dataset's in a cross-dataset run
    test = tests[0].data if isinstance(getattr(tests[0], "data", None), FewShotDataset) else data.test
    oos = (", out-of-scope pools " + " / ".join(f"{len(data.oos[r])} {r}" for r in ("train", "val", "test")
                                                if r in data.oos)) if data.oos else ""
    # an out-of-scope test evaluator's data holds the test pool as one more class: counted in `oos`, not here
    n_oos = test.count(OOS) if OOS in test.classes else 0
    log.info("data %s%s: %d train / %d val / %d test classes (%d / %d / %d examples)%s", data.name, named,
             len(data.train.classes), len(data.val.classes), len(test.classes) - bool(n_oos), len(data.train),
             len(data.val), len(test) - n_oos, oos)
    # training inputs: cached features where the encoder is frozen and nothing reads the text
    on_features = (cfg.get("train_on_features", True) and not learner.trains_on_text and encoder.frozen
                   and trainer.max_steps > 0)
    return Components(config, trainer, dist, data, encoder, learner, episodes, val, tests,
                      build_callbacks(cfg.get("callbacks")), cache, on_features, unlabelled)


def build_unlabelled(node, data: DataSplits, evaluators, learner: Learner) -> UnlabelledText | None:
    """The run's unlabelled target text (`unlabelled=...`) without any validation or test sentence of
    the run or its evaluators' data, when an objective reads it; None otherwise (with a warning when
    one was given that nothing reads)."""
    if not node:
        return None
    if not any("unlabelled" in o.reads for o in learner.objectives):
        # info, not a warning: presets name their target text for the objectives a user may add
        log.info("unlabelled text is configured but no objective reads it (objective=adversarial, or mlm / "
                 "consistency with source=unlabelled); it is not loaded.")
        return None
    extra = {"data": build(node.data, "unlabelled.data")} if "data" in node else {}
    if "run_data" in inspect.signature(import_target(node["_target_"], "unlabelled")).parameters:
        extra["run_data"] = data  # a stream of the run's own data (unlabelled=oos_train)
    stream = build(without(node, "data"), "unlabelled", **extra)
    held = [e for part in (data.val, data.test) for e in part.examples]
    held += [e for ev in evaluators for e in getattr(getattr(ev, "data", None), "examples", ())]
    return stream.without(e.text for e in held)


def open_feature_cache(cfg: DictConfig, encoder: Encoder, trainer: Trainer) -> FeatureCache | None:
    """The on-disk feature cache, for encoders whose weights this run does not train (frozen, or no
    training steps): only their features can be asked for again by another run."""
    node = cfg.get("feature_cache") or {}
    if not node.get("enabled", True) or encoder.tokenize is None or not (encoder.frozen or trainer.max_steps == 0):
        return None
    return FeatureCache(node.get("dir"), node.get("max_gb", 2.0))


def train_inputs(c: Components, state: TrainState) -> str:
    """What the learner trained on: "cached features", "text", or "none" (no training step ran)."""
    if state.step == 0:
        return "none"
    return "cached features" if c.on_features else "text"


def training_episodes(c: Components) -> EpisodeDataset:
    """The training episodes, as cached features where `c.on_features`: each training sentence is
    encoded once, in eval mode (no dropout: the features evaluation sees), so thousands of episodes
    cost about one pass over the training classes instead of one encoder forward per episode."""
    if not c.on_features:
        return c.episodes
    device, data = c.trainer.device, c.episodes.sampler.dataset
    c.learner.to(device)
    with evaluating(c.learner, device, c.trainer.autocast_dtype) as amp, torch.no_grad(), amp:
        features = encode_examples(c.learner, data, device, c.config["eval"]["batch_size"], "train: encoding",
                                   c.trainer.progress and c.dist.main, cache=c.feature_cache)
    log.info("training on cached features of the frozen encoder (%d training examples encoded once)", len(data))
    return FeatureEpisodeDataset(c.episodes.sampler, features.cpu(), len(c.episodes))


def learner_report(learner: Learner, encoder: Encoder, test_data, device) -> dict | None:
    """The learner's `report` (distill: sizes and speeds) on 256 test sentences in batches of 64."""
    examples = [test_data[i] for i in range(min(256, len(test_data)))] if encoder.tokenize is not None else []
    batches = [{k: v.to(device) for k, v in encoder.tokenize(examples[i : i + 64]).items()}
               for i in range(0, len(examples), 64)]
    report = learner.report(batches)  # None: the learner has nothing to report
    if report:
        log.info("report: %s", json.dumps({k: v for k, v in report.items() if k != "teacher_results"}))
    return report
