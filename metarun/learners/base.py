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
    nota: bool = False  # predicts none-of-the-above as class N (learners with a `nota` option)

    def training_loss(self, episode: Episode) -> StepOutput:
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups; the trainer's schedule scales each group's lr. Default: one group,
        and the fresh none-of-the-above offset (if any) at NOTA_LR."""
        rest = [p for n, p in self.named_parameters() if p.requires_grad and n != "nota_offset"]
        nota = [self.nota_offset] if getattr(self, "nota_offset", None) is not None else []
        return [{"params": rest, "lr": lr}] + ([{"params": nota, "lr": max(lr, NOTA_LR)}] if nota else [])

    def predict(self, episode: Episode) -> torch.Tensor:
        """(N*Q, N) logits for the query set; must not change meta-parameters."""
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def predict_from_features(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        raise NotImplementedError


class FeatureLearner(Learner):
    """A learner that predicts from fixed embeddings of support and query (metric learners, probes):
    `predict` embeds both sets and calls `predict_from_features`, and evaluation caches features."""

    feature_eval = True

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch)

    def predict(self, episode: Episode) -> torch.Tensor:
        return self.predict_from_features(self.embed(episode.support), episode.support_labels,
                                          self.embed(episode.query), episode.n_way)


NOTA_LR = 1e-3


def with_nota(logits: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(M, N) class logits -> (M, N+1): the none-of-the-above logit is the query's mean class logit
    plus a learned offset, so NOTA wins when no class stands out from the others. Relative to the
    mean, it needs no knowledge of the logits' scale (distances, log-probabilities, scores)."""
    return torch.cat([logits, logits.mean(-1, keepdim=True) + offset], dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
