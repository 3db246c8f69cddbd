"""An MLP over fixed feature vectors (e.g. cached sentence embeddings): (B, D_in) -> (B, D_out)."""

from __future__ import annotations

from torch import nn


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int = 384, hidden: int = 256, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
            dim = hidden
        self.net = nn.Sequential(*blocks)
        self.out_dim = dim

    def forward(self, x):
        return self.net(x)
