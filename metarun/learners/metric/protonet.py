"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is the mean of its support embeddings; a query's logits are negative squared Euclidean
distances to the prototypes (or scaled cosine similarities), with an optional none-of-the-above class
(FewRel 2.0). That is all ProtoNet holds; what the recipes add arrives from outside it:

- training terms as objectives (`objective=[supcon,instance,names,consistency,mlm]`,
  learners/objectives/), which every learner with a trainable encoder takes;
- refinements of the prototypes as refiners (learners/refiners.py): the protocol's query refiner
  (`eval.test.transductive_steps`: soft k-means, Ren et al. 2018; `eval.test.rectify`: BD-CSPN) and the
  run's class-name prior (`refiner=[name_prior]`), which also classifies K = 0 episodes (names alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import check_choice, check_number
from metarun.learners.base import PrototypeLearner, StepOutput, accuracy, with_nota
from metarun.learners.functional import cosine_similarity, squared_euclidean
from metarun.learners.refiners import EpisodeContext

DISTANCES = ("euclidean", "cosine")


class ProtoNet(PrototypeLearner):

    def __init__(self, encoder: nn.Module, distance: str = "euclidean", scale: float = 1.0, learn_scale: bool = False,
                 nota: bool = False):
        super().__init__()
        check_choice("learner.distance", distance, DISTANCES)
        check_number("learner.scale", scale, 0, low_open=True)
        self.nota = nota
        self.nota_offset = nn.Parameter(torch.zeros(())) if nota else None
        self.encoder, self.distance = encoder, distance
        log_scale = torch.tensor(float(scale)).log()
        self.log_scale = nn.Parameter(log_scale) if learn_scale else None
        if not learn_scale:
            self.register_buffer("_log_scale", log_scale)

    def predict_from_features(self, support, support_labels, query, n_way, context: EpisodeContext | None = None):
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) logits (N+1 with `nota`), against `class_prototypes`."""
        query = query.float()
        logits = self.logits(query, self.class_prototypes(support, support_labels, query, n_way, context))
        return with_nota(logits, self.nota_offset) if self.nota else logits

    def logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        scale = (self.log_scale if self.log_scale is not None else self._log_scale).exp()
        if self.distance == "euclidean":
            return -scale * squared_euclidean(query, protos)
        return scale * cosine_similarity(query, protos)

    def training_loss(self, episode: Episode) -> StepOutput:
        support, query = self.embed_episode(episode)
        logits = self.predict_from_features(support, episode.support_labels, query, episode.n_way,
                                            EpisodeContext(episode.meta.get("classes")))
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)}, (support, query))
