"""Pure tensor functions shared by learners (no modules, no state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prototypes(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means: (N*K, D), (N*K,) -> (N, D)."""
    one_hot = F.one_hot(labels, n_way).to(features.dtype)  # (N*K, N)
    return (one_hot.T @ features) / one_hot.sum(0).unsqueeze(1)


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N) squared distances, computed exactly (no expansion trick)."""
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N)."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
