"""Episode samplers: indices only, no text, no tensors.

Episode `i` is a pure function of `(seed, i)` (numpy SeedSequence), so a resumed run needs one
integer and DataLoader workers cannot disturb the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from metarun.data.dataset import FewShotDataset
from metarun.errors import ConfigError, DataError


@dataclass(frozen=True)
class EpisodeSpec:
    """`support_idx` is (N*K,) and `query_idx` (N*Q,), grouped by class: label = position // K (or // Q)."""

    classes: tuple[str, ...]
    support_idx: tuple[int, ...]
    query_idx: tuple[int, ...]
    k_shot: int
    n_query: int

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def support_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_way), self.k_shot)

    def query_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_way), self.n_query)


class EpisodeSampler:
    """N-way K-shot episodes with Q queries per class from the classes of one dataset."""

    def __init__(self, dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int, seed: int, role: str = "train"):
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{role} sampler: {name} must be a positive integer, got {value!r}.")
        n_classes = len(dataset.classes)
        if n_way > n_classes:
            raise DataError(
                f"{role} episodes ask for {n_way}-way tasks but {dataset.source} has only {n_classes} classes; "
                f"lower n_way to at most {n_classes} (sampler.n_way / eval.n_way) or use a larger class split."
            )
        need = k_shot + n_query
        short = [(c, dataset.count(c)) for c in dataset.classes if dataset.count(c) < need]
        if short:
            listing = ", ".join(f"{c!r} has {n}" for c, n in short[:5])
            raise DataError(
                f"{role} episodes need K+Q = {k_shot}+{n_query} = {need} examples per class, but in "
                f"{dataset.source} {listing}{' (and more)' if len(short) > 5 else ''}. Lower k_shot or "
                f"n_query, or drop the class from the split."
            )
        self.dataset, self.n_way, self.k_shot, self.n_query, self.seed = dataset, n_way, k_shot, n_query, seed
        self._classes = dataset.classes

    def __getitem__(self, i: int) -> EpisodeSpec:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, i]))
        chosen = rng.choice(len(self._classes), size=self.n_way, replace=False)
        support, query = [], []
        for c in chosen:
            pool = self.dataset.indices_of(self._classes[c])
            picks = rng.choice(len(pool), size=self.k_shot + self.n_query, replace=False)
            support.extend(pool[j] for j in picks[: self.k_shot])
            query.extend(pool[j] for j in picks[self.k_shot :])
        return EpisodeSpec(
            tuple(self._classes[c] for c in chosen), tuple(support), tuple(query), self.k_shot, self.n_query
        )


@dataclass
class Episode:
    """Tensors of one episode. `support`/`query` are tokeniser outputs (dicts) or feature matrices."""

    support: dict[str, torch.Tensor] | torch.Tensor
    support_labels: torch.Tensor  # (N*K,)
    query: dict[str, torch.Tensor] | torch.Tensor
    query_labels: torch.Tensor  # (N*Q,)
    n_way: int
    meta: dict = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        def move(x):
            if isinstance(x, dict):
                return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
            return x.to(device, non_blocking=non_blocking)

        return Episode(move(self.support), move(self.support_labels), move(self.query), move(self.query_labels), self.n_way, self.meta)
