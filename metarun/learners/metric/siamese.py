"""Siamese networks (Koch, Zemel & Salakhutdinov, ICML deep-learning workshop 2015).

The same encoder embeds both members of a pair; their similarity is sigmoid(sum_j alpha_j |h1_j - h2_j| + b),
a weighted L1 distance, trained with binary cross-entropy on same / different pairs. In an episode
every (query, support item) pair is scored; a class's score is the mean or the max (`aggregate`) of
its K pair logits. Training pairs are balanced: every same-class pair of the episode, and as many
different-class pairs, drawn at random or, with `hard_negatives`, the highest-scoring ones.
None-of-the-above (`nota`): a learned threshold on the best class score, i.e. a NOTA logit equal to
the threshold, which wins when no class scores above it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import check_choice, check_number
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, encoder_and_rest

AGGREGATE = ("mean", "max")


class Siamese(FeatureLearner):

    def __init__(self, encoder: nn.Module, aggregate: str = "mean", hard_negatives: bool = False,
                 head_lr: float | None = 1e-3, nota: bool = False):
        super().__init__()
        check_choice("learner.aggregate", aggregate, AGGREGATE)
        check_number("learner.head_lr", head_lr, 0, low_open=True, null="trainer.lr")
        self.encoder, self.aggregate, self.hard_negatives, self.head_lr = encoder, aggregate, hard_negatives, head_lr
        # alpha starts negative and equal: a larger distance means "different", as for a fixed L1 metric
        self.alpha = nn.Parameter(torch.full((encoder.out_dim,), -1.0 / encoder.out_dim ** 0.5))
        self.bias = nn.Parameter(torch.tensor(2.0))
        self.nota = nota
        self.nota_offset = nn.Parameter(torch.zeros(())) if nota else None  # the threshold (a logit)

    def param_groups(self, lr: float) -> list[dict]:
        return encoder_and_rest(self, lr, self.head_lr or lr)

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(M, D), (S, D) -> (M, S) same-class logits of every pair."""
        return (a.float().unsqueeze(1) - b.float().unsqueeze(0)).abs() @ self.alpha + self.bias

    def class_scores(self, pairs: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """(M, N*K) pair logits -> (M, N) class logits: the mean or max over each class's shots."""
        one_hot = F.one_hot(support_labels, n_way).to(pairs.dtype)  # (N*K, N)
        if self.aggregate == "mean":
            return pairs @ one_hot / one_hot.sum(0)
        masked = pairs.unsqueeze(-1).masked_fill(one_hot.unsqueeze(0) == 0, float("-inf"))  # (M, N*K, N)
        return masked.amax(1)

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        scores = self.class_scores(self.pair_logits(query, support), support_labels, n_way)
        if self.nota:
            scores = torch.cat([scores, self.nota_offset.expand(len(scores), 1)], -1)
        return scores

    def balanced_pairs(self, pairs: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every same-class pair and as many different-class ones -> (logits, targets)."""
        pos, neg = pairs[same], pairs[~same]
        k = min(len(pos), len(neg))
        if self.hard_negatives:
            neg = neg.topk(k).values  # the different pairs the model finds most alike
        else:
            neg = neg[torch.randperm(len(neg), device=neg.device)[:k]]
        return torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])

    def training_loss(self, episode: Episode) -> StepOutput:
        s, q = self.embed_episode(episode)
        pairs = self.pair_logits(q, s)  # (M, N*K)
        same = episode.query_labels.unsqueeze(1) == episode.support_labels.unsqueeze(0)  # NOTA queries: never
        logits, targets = self.balanced_pairs(pairs, same)
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        scores = self.class_scores(pairs, episode.support_labels, episode.n_way)
        if self.nota:  # the threshold learns from the episode's classification; the pairs stay on BCE
            scores = torch.cat([scores.detach(), self.nota_offset.expand(len(scores), 1)], -1)
            loss = loss + F.cross_entropy(scores, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(scores.detach(), episode.query_labels)})
