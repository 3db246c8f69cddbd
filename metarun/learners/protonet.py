"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is the mean of its support embeddings; a query's logits are negative squared Euclidean
distances to the prototypes (or scaled cosine similarities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, with_nota
from metarun.learners.functional import cosine_similarity, prototypes, squared_euclidean

DISTANCES = ("euclidean", "cosine")


class ProtoNet(FeatureLearner):

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

    def predict_from_features(self, support, support_labels, query, n_way):
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) logits (N+1 with `nota`)."""
        protos = prototypes(support.float(), support_labels, n_way)
        scale = (self.log_scale if self.log_scale is not None else self._log_scale).exp()
        if self.distance == "euclidean":
            logits = -scale * squared_euclidean(query.float(), protos)
        else:
            logits = scale * cosine_similarity(query.float(), protos)
        return with_nota(logits, self.nota_offset) if self.nota else logits

    def training_loss(self, episode: Episode) -> StepOutput:
        logits = self.predict(episode)
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})
