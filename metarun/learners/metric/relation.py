"""Relation Network (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

Each class is represented by its support embeddings combined (the paper sums them; we average, so a
relation module sees the same scale at 1 and 5 shots); a learned relation module scores every
(class, query) pair from their concatenation with a sigmoid, and the loss is the mean squared error
against the one-hot query labels. The relation module is new, so it trains at `head_lr` while a
pretrained encoder keeps the trainer's (fine-tuning) rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import check_int
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, encoder_and_rest, with_nota
from metarun.learners.functional import prototypes


class RelationNet(FeatureLearner):

    def __init__(self, encoder: nn.Module, hidden: int = 256, head_lr: float | None = 1e-3, nota: bool = False):
        super().__init__()
        self.nota = nota
        self.nota_offset = nn.Parameter(torch.zeros(())) if nota else None
        check_int("learner.hidden", hidden)
        self.encoder, self.head_lr = encoder, head_lr
        d = encoder.out_dim
        self.relation = nn.Sequential(nn.Linear(2 * d, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def param_groups(self, lr: float) -> list[dict]:
        return encoder_and_rest(self, lr, self.head_lr or lr)

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) relation scores in (0, 1) (and a NOTA score with `nota`)."""
        classes = prototypes(support.float(), support_labels, n_way)  # (N, D)
        q, c = query.float().unsqueeze(1), classes.unsqueeze(0)  # (M, 1, D), (1, N, D)
        pairs = torch.cat(torch.broadcast_tensors(c, q), dim=-1)  # (M, N, 2D): [class, query]
        dtype = self.relation[0].weight.dtype
        scores = torch.sigmoid(self.relation(pairs.to(dtype)).squeeze(-1).float())
        return with_nota(scores, self.nota_offset) if self.nota else scores

    def training_loss(self, episode: Episode) -> StepOutput:
        scores = self.predict(episode)
        loss = F.mse_loss(scores, F.one_hot(episode.query_labels, scores.shape[-1]).to(scores.dtype))
        return StepOutput(loss, {"acc": accuracy(scores.detach(), episode.query_labels)})
