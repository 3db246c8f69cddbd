"""The encoder contract: every encoder answers the same few questions, so learners never probe.

An encoder is an `nn.Module` mapping a batch to (B, out_dim) features. Encoders of text set
`tokenize` (examples -> dict of (B, L) tensors, picklable for DataLoader workers); encoders over
fixed feature tensors leave it None. Transformer encoders also expose their layers and backbone;
the defaults below say "not a transformer" with an error a user can act on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from metarun.errors import ConfigError


class Encoder(nn.Module):
    """The encoder contract. An encoder built from a config (`configs/encoder/*.yaml`) also takes
    `pretokenize`, the datasets whose sentences its tokenizer may tokenise once up front (the run's
    token cache, data/tokenized.py), so it is complete when built."""

    name: str = "encoder"
    out_dim: int
    tokenize: Callable[[Sequence], dict[str, torch.Tensor]] | None = None  # None: inputs are feature tensors
    transformer: bool = False  # a Hugging Face transformer: the methods below work
    untrained_tokens: bool = False  # has added tokens (entity markers) whose embeddings nothing trained yet
    frozen: bool = False  # built with freeze=true: its weights never train

    def cache_identity(self) -> dict:
        """What, besides its weights, decides this encoder's features of a text: its class, name and
        tokenizer settings (`tokenize.identity()`); encoders with settings of their own add them.
        The feature cache keys entries by it (evaluate/feature_cache.py)."""
        return {"encoder": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name,
                "tokenizer": self.tokenize.identity() if self.tokenize is not None else None}

    # -- transformer encoders override these ------------------------------------------------------
    def transformer_layers(self) -> nn.ModuleList:
        """The stack of transformer blocks, bottom first (adapted by `adapt=top_k`, copied by distill
        and cross-stitch)."""
        raise ConfigError(
            f"this needs a transformer encoder (encoder=minilm or minilm_markers), not encoder={self.name}."
        )

    def layer_inputs(self, batch: dict[str, torch.Tensor], start: int) -> tuple[torch.Tensor, object]:
        """The forward below transformer layer `start`: (B, L, H) hidden states entering it, and the
        attention mask the layers take. `forward(batch, from_layer=(start, states, mask))` finishes
        it, so a learner adapting only the layers from `start` up runs the rest once per task."""
        raise ConfigError(
            f"this needs a transformer encoder (encoder=minilm or minilm_markers), not encoder={self.name}."
        )

    @property
    def backbone(self) -> nn.Module:
        """The transformer itself, called with input_ids / attention_mask / token_type_ids and returning
        `last_hidden_state` (BERT-PAIR scores sentence pairs with it)."""
        raise ConfigError(
            f"this needs a transformer encoder (encoder=minilm or minilm_markers), not encoder={self.name}."
        )

    @property
    def hidden_size(self) -> int:
        """Width of the backbone's hidden states (out_dim is 2x that with entity-start pooling)."""
        return self.out_dim

    def use_double_backward_attention(self) -> None:
        """Second-order MAML differentiates the encoder twice; encoders whose kernels cannot switch to
        a path that can (transformers: eager attention) or raise ConfigError. Default: nothing to do."""

    # -- optional capabilities --------------------------------------------------------------------
    def fast_parameters(self) -> list[nn.Parameter]:
        """Freshly initialised parameters that should learn at the heads' rate (cross-stitch units)."""
        return []

    batched_params: bool = False  # implements forward_batched

    def forward_batched(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """T models at once: `params` maps parameter names to (T, ...) tensors; (T, B, ...) -> (T, B, D).
        Only for encoders with `batched_params = True`."""
        raise NotImplementedError
