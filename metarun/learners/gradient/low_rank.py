"""Low-rank inner loops (`learner.adapt=lora`): the inner loop adapts rank-r deltas of chosen linear
layers, W + B A, instead of the weights themselves (LoRA, Hu et al. 2022, as MAML's fast weights).

A (r x in), the down-projection, is meta-learned in the outer loop and starts random, as in LoRA; B
(out x r), the up-projection, is what each task adapts, starting from zero, so step 0 is the
meta-learned encoder itself. A MiniLM layer's six linear layers hold 1.77 M weights; their rank-4
up-projections 7,680 coordinates.

The delta is never merged into W: a forward hook on each target layer adds (x A^T) B^T to its output
while the inner loop's B are in place (`applied`). The inner gradient then needs only dL/dB =
dy^T (x A^T), not the out x in matrix dL/dW that merging (W + B A) would compute at every inner step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from metarun.errors import ConfigError, check_int
from metarun.models.base import Encoder

# the linear layers of a BERT block: attention (query, key, value, output) and feed-forward (in, out)
BERT_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


def block_linears(encoder: Encoder, targets: Sequence[str]) -> None:
    """Refuse `targets` that are not linear layers of the encoder's transformer blocks, listing those."""
    linear = {rel for rel, m in encoder.transformer_layers()[0].named_modules() if isinstance(m, nn.Linear)}
    unknown = [t for t in targets if t not in linear]
    if unknown or not targets:
        raise ConfigError(f"learner targets {list(targets)} must name linear layers of a transformer block; "
                          f"encoder={encoder.name}'s blocks have: {', '.join(sorted(linear))}.")


def check_top_k(encoder: Encoder, top_k: int, adapt: str) -> None:
    """learner.top_k must name 1 .. (the encoder's transformer layers) layers."""
    layers = len(encoder.transformer_layers())
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= layers:
        raise ConfigError(f"learner.top_k={top_k!r} is not valid with learner.adapt={adapt}: encoder={encoder.name} "
                          f"has {layers} transformer layers, so give 1 to {layers}"
                          + (" (for the head alone, learner.adapt=head)." if top_k == 0 else "."))


class LowRankDeltas(nn.Module):
    """Rank-`rank` deltas of the `targets` linear layers in the top `n_top` transformer blocks.

    `names`: the adapted tensors, "lora.up.<block>_<target>" (out x rank), which `start` gives as
    zeros; inside `applied(params)` the encoder's target layers add their deltas to their outputs."""

    def __init__(self, encoder: Encoder, n_top: int, targets: Sequence[str], rank: int):
        super().__init__()
        if not encoder.transformer:
            raise ConfigError(f"learner.adapt=lora adapts low-rank deltas of transformer layers, but "
                              f"encoder={encoder.name} has none; use learner.adapt=all or head.")
        check_int("learner.lora_rank", rank)
        block_linears(encoder, targets)
        layers = list(encoder.transformer_layers())
        check_top_k(encoder, n_top, "lora")
        smallest = min(min(layers[-1].get_submodule(t).weight.shape) for t in targets)
        if rank > smallest:  # a delta of full rank is no longer low rank, and memory grows with the rank
            raise ConfigError(f"learner.lora_rank={rank} is larger than the adapted layers allow: the smallest of "
                              f"learner.lora_targets has {smallest} inputs or outputs, so give at most {smallest} "
                              f"(low-rank deltas use 4 to 64).")
        self.down = nn.ParameterDict()
        self.shapes: dict[str, torch.Size] = {}  # adapted name -> (out, rank)
        self._up: dict[str, torch.Tensor] = {}  # key -> the B in place while `applied`
        for index in range(len(layers) - n_top, len(layers)):
            for target in targets:
                linear = layers[index].get_submodule(target)
                key = f"{index}_{target.replace('.', '_')}"
                out_dim, in_dim = linear.weight.shape
                self.down[key] = nn.Parameter(torch.randn(rank, in_dim) / in_dim**0.5)
                self.shapes[f"lora.up.{key}"] = torch.Size([out_dim, rank])
                linear.register_forward_hook(self._hook(key))

    def _hook(self, key: str):
        def add_delta(module, args, out):
            up = self._up.get(key)
            return out if up is None else out + (args[0] @ self.down[key].T) @ up.T
        return add_delta

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    def start(self) -> dict[str, torch.Tensor]:
        """Every up-projection at zero: the deltas vanish, the encoder is the meta-learned one."""
        like = next(iter(self.down.values()))
        return {name: like.new_zeros(shape) for name, shape in self.shapes.items()}

    @contextmanager
    def applied(self, params: dict[str, torch.Tensor]) -> Iterator[None]:
        """The encoder's target layers add W x + (x A^T) B^T for the B in `params` (none: unchanged)."""
        prefix = len("lora.up.")
        previous, self._up = self._up, {n[prefix:]: params[n] for n in self.shapes if n in params}
        try:
            yield
        finally:
            self._up = previous
