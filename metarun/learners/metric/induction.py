"""Induction Networks (Geng, Li, Li, Zhu, Jian & Sun, EMNLP 2019).

- Induction module: each support feature is transformed and squashed, e_hat = squash(W_s e + b_s);
  dynamic routing (`routing_iters`, 3) builds each class vector c = squash(sum_j d_j e_hat_j), with
  coupling coefficients d = softmax(b) over the class's shots and b_j += e_hat_j . c after each iteration.
- Relation module: a neural tensor layer v = ReLU(c^T M^[1..h] q) (h = `relation_dim` slices), then
  r = sigmoid(W_r v + b_r); trained with MSE against one-hot labels, as in the paper.

The full tensor has D x D x h parameters: 384 x 384 x 100 = 14.7 M on MiniLM, two thirds of the
encoder, and most of it would be fitted on a few dozen training classes. `tensor_rank` (default 16)
factorises each slice as M_k = U_k V_k^T, so c^T M_k q = (U_k^T c) . (V_k^T q) with 2 x D x rank x h
parameters (1.2 M at rank 16, h 100); `tensor_rank: null` is the paper's full tensor.
The paper's encoder (a BiLSTM with self-attention) is metarun's encoder here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import check_int
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, encoder_and_rest


def squash(x: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule squashing (Sabour et al. 2017): direction of x, length |x|^2 / (1 + |x|^2)."""
    sq = x.pow(2).sum(-1, keepdim=True)
    return sq / (1 + sq) * x / (sq + eps).sqrt()


def dynamic_routing(e_hat: torch.Tensor, labels: torch.Tensor, n_way: int, iters: int):
    """(N*K, D) transformed support features -> class vectors (N, D) and the final coupling
    coefficients (N*K,), which sum to one over each class's shots."""
    member = F.one_hot(labels, n_way).bool()  # (N*K, N)
    b = e_hat.new_zeros(len(labels))
    for it in range(iters):
        logits = b.unsqueeze(1).masked_fill(~member, float("-inf"))  # (N*K, N): a column per class
        d = logits.softmax(0).masked_fill(~member, 0.0)  # softmax over each class's shots
        c = squash(d.T @ e_hat)  # (N, D)
        if it < iters - 1:
            b = b + (e_hat * c[labels]).sum(-1)
    return c, d.sum(1)


class InductionNet(FeatureLearner):

    def __init__(self, encoder: nn.Module, routing_iters: int = 3, relation_dim: int = 100,
                 tensor_rank: int | None = 16, head_lr: float | None = 1e-3):
        super().__init__()
        check_int("learner.routing_iters", routing_iters)
        check_int("learner.relation_dim", relation_dim)
        check_int("learner.tensor_rank", tensor_rank, null="the full tensor")
        self.encoder, self.routing_iters, self.head_lr = encoder, routing_iters, head_lr
        d, h = encoder.out_dim, relation_dim
        self.transform = nn.Linear(d, d)
        # initialised so that each slice's c^T M_k q has a standard deviation of about |c| |q|: the
        # relation scores differ from the start (with 1/d scaling they would agree to 1e-5)
        if tensor_rank is None:
            self.tensor = nn.Parameter(torch.randn(h, d, d))
        else:  # M_k = U_k V_k^T
            self.u = nn.Parameter(torch.randn(d, h, tensor_rank))
            self.v = nn.Parameter(torch.randn(d, h, tensor_rank) / tensor_rank ** 0.5)
        self.tensor_rank = tensor_rank
        self.score = nn.Linear(h, 1)

    def param_groups(self, lr: float) -> list[dict]:
        return encoder_and_rest(self, lr, self.head_lr or lr)

    def class_vectors(self, support: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
        return dynamic_routing(squash(self.transform(support)), labels, n_way, self.routing_iters)[0]

    def relation(self, classes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(N, D) class vectors, (M, D) queries -> (M, N) relation scores in (0, 1)."""
        if self.tensor_rank is None:
            v = torch.einsum("nd,hde,me->mnh", classes, self.tensor, query)
        else:
            v = torch.einsum("nhr,mhr->mnh", torch.einsum("nd,dhr->nhr", classes, self.u),
                             torch.einsum("md,dhr->mhr", query, self.v))
        return torch.sigmoid(self.score(F.relu(v)).squeeze(-1))

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        dtype = self.transform.weight.dtype
        return self.relation(self.class_vectors(support.to(dtype), support_labels, n_way), query.to(dtype)).float()

    def training_loss(self, episode: Episode) -> StepOutput:
        scores = self.predict(episode)
        loss = F.mse_loss(scores, F.one_hot(episode.query_labels, scores.shape[-1]).to(scores.dtype))
        return StepOutput(loss, {"acc": accuracy(scores.detach(), episode.query_labels)})
