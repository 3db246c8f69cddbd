"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is the mean of its support embeddings; a query's logits are negative squared Euclidean
distances to the prototypes (or scaled cosine similarities). At evaluation the prototypes can be
refined with the episode's unlabelled queries (`eval.test.transductive_steps`: soft k-means, Ren et
al. 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, with_nota
from metarun.learners.functional import cosine_similarity, soft_kmeans_prototypes, squared_euclidean

DISTANCES = ("euclidean", "cosine")


class ProtoNet(FeatureLearner):

    transductive = True  # predict_from_features takes transductive_steps

    def __init__(self, encoder: nn.Module, distance: str = "euclidean", scale: float = 1.0, learn_scale: bool = False,
                 nota: bool = False):
        super().__init__()
        self.nota = nota
        self.nota_offset = nn.Parameter(torch.zeros(())) if nota else None
        check_choice("learner.distance", distance, DISTANCES)
        if scale <= 0:
            raise ConfigError(f"learner.scale must be positive, got {scale}.")
        self.encoder, self.distance = encoder, distance
        log_scale = torch.tensor(float(scale)).log()
        self.log_scale = nn.Parameter(log_scale) if learn_scale else None
        if not learn_scale:
            self.register_buffer("_log_scale", log_scale)

    def predict_from_features(self, support, support_labels, query, n_way, transductive_steps: int = 0):
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) logits (N+1 with `nota`); `transductive_steps` of
        soft k-means move the prototypes towards the queries first."""
        query = query.float()
        protos = soft_kmeans_prototypes(support.float(), support_labels, query, n_way, transductive_steps, self.logits)
        logits = self.logits(query, protos)
        return with_nota(logits, self.nota_offset) if self.nota else logits

    def logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        scale = (self.log_scale if self.log_scale is not None else self._log_scale).exp()
        if self.distance == "euclidean":
            return -scale * squared_euclidean(query, protos)
        return scale * cosine_similarity(query, protos)

    def training_loss(self, episode: Episode) -> StepOutput:
        logits = self.predict(episode)
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})
