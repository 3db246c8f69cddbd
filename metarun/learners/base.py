"""The learner contract: an nn.Module that turns an episode into a loss and metrics.

Learners never step optimisers, log, move devices or write files; the trainer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from metarun.data.sampler import Episode


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Learner(nn.Module):
    """Base class. Subclasses set `name` and implement `training_loss` and `predict`.

    A learner whose predictions depend on the encoder only through fixed embeddings (no test-time
    fine-tuning of the encoder) sets `feature_eval = True` and implements `embed` and
    `predict_from_features`; evaluation then encodes each distinct sentence once and samples
    thousands of episodes from cached features.
    """

    name: str = "learner"
    feature_eval: bool = False

    def training_loss(self, episode: Episode) -> StepOutput:
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups; the trainer's schedule scales each group's lr. Default: one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def predict(self, episode: Episode) -> torch.Tensor:
        """(N*Q, N) logits for the query set; must not change meta-parameters."""
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def predict_from_features(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        raise NotImplementedError


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
