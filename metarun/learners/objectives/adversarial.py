"""Domain-adversarial training on unlabelled target-domain text (Ganin & Lempitsky, ICML 2015, DANN;
FewRel 2.0's Proto-ADV, Gao et al., EMNLP 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.errors import check_choice, check_int, check_number
from metarun.learners.functional import dann_lambda, reverse_gradient
from metarun.learners.objectives import Objective, episode_features

SCHEDULES = ("dann", "constant")


def discriminator_loss(logits: torch.Tensor, n_source: int) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy of domain logits (M,), the first `n_source` from the source domain (label 0),
    the rest from the target (label 1); and the share classified right."""
    labels = torch.zeros_like(logits)
    labels[n_source:] = 1.0
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    return loss, ((logits > 0).float() == labels).float().mean().item()


class Adversarial(Objective):
    """A domain discriminator (an MLP on the encoder's features: `hidden` units, ReLU, one logit) learns
    to tell the episode's source-domain sentences from as many sentences of the unlabelled target
    stream (`batch_size`; null: the episode's size); the encoder learns to fool it through a
    gradient-reversal layer whose weight follows DANN's schedule 2 / (1 + e^(-gamma p)) - 1 over
    training (`schedule: dann`; `constant`: 1 throughout). One backward trains both, as in DANN; the
    FewRel toolkit's Proto-ADV alternates discriminator and encoder updates instead, which needs a second
    optimiser and step the trainer does not have. Metrics: `adversarial` (the discriminator's loss),
    `adversarial_acc` (its accuracy: 0.5 is chance), `adversarial_lambda`."""

    name = "adversarial"
    reads = frozenset({"features", "unlabelled"})

    def __init__(self, weight: float = 0.1, hidden: int = 256, batch_size: int | None = None,
                 schedule: str = "dann", gamma: float = 10.0, lr: float = 1e-3):
        super().__init__(weight)
        check_int("objective.adversarial.hidden", hidden, 1)
        check_int("objective.adversarial.batch_size", batch_size, 1, null="the episode's size")
        check_choice("objective.adversarial.schedule", schedule, SCHEDULES)
        check_number("objective.adversarial.gamma", gamma, 0, low_open=True)
        check_number("objective.adversarial.lr", lr, 0, low_open=True)
        self.hidden, self.batch_size, self.schedule, self.gamma, self.lr = hidden, batch_size, schedule, gamma, lr
        self.discriminator = None

    def bind(self, learner) -> None:
        super().bind(learner)
        dim = learner.encoder.out_dim
        self.discriminator = nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))

    def loss(self, episode, features, learner):
        support, query = episode_features(episode, features, learner)
        source = support if query is None else torch.cat([support, query])
        target = learner.embed(self.target_batch(learner, self.batch_size or len(source)))
        scale = dann_lambda(self.progress(episode), self.gamma) if self.schedule == "dann" else 1.0
        both = reverse_gradient(torch.cat([source, target]).float(), scale)
        logits = self.discriminator(both).squeeze(-1)
        value, acc = discriminator_loss(logits, len(source))
        return value, {self.name: value.item(), f"{self.name}_acc": acc, f"{self.name}_lambda": scale}
