"""Outlier exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019): out-of-scope examples seen in
training are pushed away from every class, their predicted distribution over the episode's classes
towards uniform."""

from __future__ import annotations

import torch

from metarun.errors import check_int
from metarun.learners.objectives import Objective, episode_features


class OutlierExposure(Objective):
    """`batch_size` sentences of the run's unlabelled stream, which here is out-of-scope text
    (`unlabelled=oos_train`: the data's training out-of-scope utterances, CLINC150's oos_train), are
    scored against the episode's class prototypes (the support features' class means, by the learner's
    own `logits`); the term is their cross-entropy to the uniform distribution, -mean_c log p(c | x),
    smallest when no class claims them. Metric: `outlier` (the term) and `outlier_maxprob` (their mean
    largest probability: 1/N is uniform)."""

    name = "outlier"
    reads = frozenset({"features", "unlabelled"})

    def __init__(self, weight: float = 0.5, batch_size: int = 10):
        super().__init__(weight)
        check_int("objective.outlier.batch_size", batch_size)
        self.batch_size = batch_size

    def loss(self, episode, features, learner):
        support, _ = episode_features(episode, features, learner)
        labels = episode.support_labels
        protos = torch.stack([support[labels == c].float().mean(0) for c in range(episode.n_way)])
        outliers = learner.embed(self.target_batch(learner, self.batch_size)).float()
        logp = learner.logits(outliers, protos).log_softmax(-1)
        value = -logp.mean()
        return value, {self.name: value.item(), f"{self.name}_maxprob": logp.exp().amax(-1).mean().item()}
