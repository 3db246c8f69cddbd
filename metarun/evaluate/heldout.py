"""Multi-task learners: each task's head on that task's held-out examples."""

from __future__ import annotations

import math

import torch

from metarun.data.dataset import FewShotDataset
from metarun.evaluate.common import Evaluator, encode_examples, evaluating
from metarun.learners.base import Learner


class HeldOutTasks(Evaluator):
    """Learners with `task_heads` (multi-task): each task's head on that task's held-out examples ->
    {test/task_<t>: {acc, ci95, examples}}, accuracy with a binomial 95% interval over examples."""

    def __init__(self, heldout: dict[str, FewShotDataset], batch_size: int = 64, progress: bool = True,
                 feature_cache=None):
        self.heldout, self.batch_size, self.progress = heldout, batch_size, progress
        self.feature_cache = feature_cache

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
        out = {}
        with evaluating(learner, device, autocast_dtype) as amp:
            for task, data in self.heldout.items():
                if len(data) == 0:
                    continue
                with torch.inference_mode(), amp:
                    feats = encode_examples(learner, data, device, self.batch_size, f"held-out {task}: encoding",
                                            self.progress, cache=self.feature_cache)
                acc = learner.task_accuracy(task, feats, [e.label for e in data.examples])
                ci = 1.96 * math.sqrt(acc * (1 - acc) / len(data))  # binomial normal approximation
                out[f"test/task_{task}"] = {"acc": round(100 * acc, 2), "ci95": round(100 * ci, 2),
                                            "examples": len(data)}
        return out
