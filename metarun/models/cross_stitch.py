"""Soft parameter sharing for multi-task learning: cross-stitch units (Misra et al., CVPR 2016)
between per-task towers of a pretrained transformer.

Misra et al. run one network per task and, after chosen layers, replace each task's activations by a
learned linear combination of all tasks' activations: h_t <- sum_u alpha[t, u] h_u. Running a full
MiniLM per task would multiply the cost by the number of tasks, so we keep the bottom layers shared
(hard sharing, where representations are generic anyway) and give each task its own copy of the top
`tower_layers` layers, with a cross-stitch unit after every tower layer. Every tower starts from the
same pretrained layers and alpha from (self_weight on the diagonal, the rest spread evenly; Misra et
al. found 0.9 / 0.1 best), so training starts from the pretrained encoder's function.

Every tower sees every sentence of a batch (as in the paper); task t's loss reads tower t's output.
For few-shot evaluation of new classes the embedding is the mean of the towers' pooled outputs, or
one named tower (`eval_tower`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metarun.errors import ConfigError
from metarun.models.base import Encoder
from metarun.models.encoders import TransformerEncoder, pool_states


class CrossStitchEncoder(Encoder):
    """(B, L) tokens -> (T, B, D) pooled features, one row per task tower (`towers`), or (B, D)."""

    def __init__(
        self,
        encoder: TransformerEncoder,
        tasks: Sequence[str],
        tower_layers: int = 2,
        self_weight: float = 0.9,
        eval_tower: str | None = None,
    ):
        super().__init__()
        n_layers = len(encoder.transformer_layers())
        if not 1 <= tower_layers <= n_layers:
            raise ConfigError(
                f"learner.tower_layers={tower_layers} must be between 1 and the encoder's {n_layers} layers."
            )
        if len(tasks) < 2:
            raise ConfigError(
                f"learner.sharing=cross_stitch mixes several task towers, but the data has one "
                f"task ({list(tasks)}); use multi-task data such as data=intents3."
            )
        if not 0 < self_weight <= 1:
            raise ConfigError(f"learner.stitch_self_weight must be in (0, 1], got {self_weight}.")
        if eval_tower is not None and eval_tower not in tasks:
            raise ConfigError(
                f"learner.eval_tower={eval_tower!r} is not a task; choose one of {', '.join(tasks)} "
                f"(or null for the mean of all towers)."
            )
        self.tasks, self.eval_tower, self.name = list(tasks), eval_tower, f"{encoder.name}_cross_stitch"
        self.tokenize, self.out_dim = encoder.tokenize, encoder.out_dim
        self.pooling, self.normalize = encoder.pooling, encoder.normalize
        split = n_layers - tower_layers
        self.shared = encoder.layer_stack(range(split), embeddings=True)
        # stages[j][t]: task t's copy of encoder layer split + j
        self.stages = nn.ModuleList(
            nn.ModuleList(encoder.layer_stack([split + j], embeddings=False) for _ in tasks)
            for j in range(tower_layers)
        )
        n = len(tasks)
        off = (1 - self_weight) / (n - 1)
        init = torch.full((n, n), off) + (self_weight - off) * torch.eye(n)
        self.stitch = nn.ParameterList(nn.Parameter(init.clone()) for _ in range(tower_layers))

    def fast_parameters(self) -> list[nn.Parameter]:
        """The cross-stitch weights: fresh, so they learn at the heads' rate (Misra et al. use a larger
        rate for them too)."""
        return list(self.stitch)

    def towers(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        h = self.shared(**inputs).last_hidden_state  # (B, L, H)
        hs = [h] * len(self.tasks)
        for stage, alpha in zip(self.stages, self.stitch):
            out = torch.stack(
                [
                    tower(inputs_embeds=x, attention_mask=batch["attention_mask"]).last_hidden_state
                    for tower, x in zip(stage, hs)
                ]
            )  # (T, B, L, H)
            hs = list(torch.einsum("tu,ubld->tbld", alpha.to(out.dtype), out))
        return torch.stack([pool_states(x, batch, self.pooling, self.normalize) for x in hs])  # (T, B, D)

    def cache_identity(self) -> dict:
        return super().cache_identity() | {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "tasks": self.tasks,
            "eval_tower": self.eval_tower,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = self.towers(batch)
        return feats.mean(0) if self.eval_tower is None else feats[self.tasks.index(self.eval_tower)]
