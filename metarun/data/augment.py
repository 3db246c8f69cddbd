"""Offline text augmentations on token ids, for unsupervised consistency on unlabelled utterances
(`objective=consistency`): ProtAugment's idea (Dopierre et al. 2021) without its paraphrase
model. Each function takes one sentence's content tokens (no [CLS] / [SEP] / padding) and a numpy
Generator and returns new tokens, never an empty list:

- `delete`: drop each token with probability p (EDA's random deletion);
- `swap`: swap two random positions, n times (EDA's random swap);
- `insert`: insert a near neighbour of a random token of the sentence at a random position, n times
  (EDA's random insertion, with the encoder's nearest token embeddings standing in for WordNet synonyms);
- `replace`: replace each token with probability p by one of its near neighbours;
- `cutoff`: remove one contiguous span of a share r of the tokens (span cutoff, Shen et al. 2020).

`neighbours(t)` gives a token's nearest tokens by cosine similarity of the input embedding table
(`TokenNeighbours`), so every augmentation runs offline with the encoder alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

AUGMENTATIONS = ("delete", "swap", "insert", "replace", "cutoff")
Neighbours = Callable[[int], Sequence[int]]


def delete(tokens: list[int], rng: np.random.Generator, p: float) -> list[int]:
    keep = [t for t, r in zip(tokens, rng.random(len(tokens))) if r >= p]
    return keep or [tokens[int(rng.integers(len(tokens)))]]


def swap(tokens: list[int], rng: np.random.Generator, n: int) -> list[int]:
    out = list(tokens)
    for _ in range(n if len(out) > 1 else 0):
        i, j = rng.choice(len(out), size=2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def insert(tokens: list[int], rng: np.random.Generator, n: int, neighbours: Neighbours) -> list[int]:
    out = list(tokens)
    for _ in range(n):
        near = neighbours(out[int(rng.integers(len(out)))])
        out.insert(int(rng.integers(len(out) + 1)), int(near[int(rng.integers(len(near)))]))
    return out


def replace(tokens: list[int], rng: np.random.Generator, p: float, neighbours: Neighbours) -> list[int]:
    out = []
    for t, r in zip(tokens, rng.random(len(tokens))):
        if r < p:
            near = neighbours(t)
            t = int(near[int(rng.integers(len(near)))])
        out.append(t)
    return out


def cutoff(tokens: list[int], rng: np.random.Generator, ratio: float) -> list[int]:
    if len(tokens) < 2:
        return list(tokens)
    span = min(len(tokens) - 1, max(1, round(ratio * len(tokens))))
    start = int(rng.integers(len(tokens) - span + 1))
    return tokens[:start] + tokens[start + span:]


def augment(tokens: list[int], kind: str, rng: np.random.Generator, strength: float, neighbours: Neighbours
            ) -> list[int]:
    """`tokens` augmented by `kind` at `strength`: the probability of delete / replace, the share of
    cutoff, and n = max(1, round(strength x length)) swaps or insertions."""
    n = max(1, round(strength * len(tokens)))
    if kind == "delete":
        return delete(tokens, rng, strength)
    if kind == "swap":
        return swap(tokens, rng, n)
    if kind == "insert":
        return insert(tokens, rng, n, neighbours)
    if kind == "replace":
        return replace(tokens, rng, strength, neighbours)
    if kind == "cutoff":
        return cutoff(tokens, rng, strength)
    raise ValueError(f"unknown augmentation {kind!r}; one of {', '.join(AUGMENTATIONS)}")


class TokenNeighbours:
    """The `k` nearest tokens of a token by cosine similarity of the rows of `embeddings` (V, H),
    itself and the `excluded` ids (special and unused tokens) left out. Computed on first use per token
    from the table as it is then (the pretrained one when augmentations start with training)."""

    def __init__(self, embeddings: torch.Tensor, excluded: Sequence[int], k: int = 5):
        table = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)
        self.table, self.k, self._near = table, k, {}
        self._banned = torch.zeros(len(table), dtype=torch.bool)
        self._banned[list(excluded)] = True

    def __call__(self, token: int) -> list[int]:
        if token not in self._near:
            sims = self.table @ self.table[token]
            sims[self._banned] = -2.0
            sims[token] = -2.0
            self._near[token] = sims.topk(self.k).indices.tolist()
        return self._near[token]
