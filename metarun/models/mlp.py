"""An MLP over fixed feature vectors (e.g. cached sentence embeddings): (B, D_in) -> (B, D_out)."""

from __future__ import annotations

import torch
from torch import nn

from metarun.models.base import Encoder


class MLPEncoder(Encoder):
    name, batched_params = "mlp", True

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

    def forward_batched(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """T models at once: `params` maps this module's parameter names to (T, ...) tensors;
        (T, B, D_in) -> (T, B, D_out). Used to run the tasks of a meta-batch together."""
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                x = torch.baddbmm(params[f"net.{i}.bias"].unsqueeze(1), x, params[f"net.{i}.weight"].transpose(1, 2))
            else:
                x = layer(x)
        return x
