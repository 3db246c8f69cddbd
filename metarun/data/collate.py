"""Where episodes become tensors: `Episode` (what a learner receives) and `EpisodeDataset`, which looks
up examples, tokenises and pads (in DataLoader workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from metarun.data.dataset import Example, FewShotDataset
from metarun.data.sampler import BatchSampler, EpisodeSampler, MultiTaskSampler


@dataclass
class Episode:
    """Tensors of one episode. `support`/`query` are tokeniser outputs (dicts) or feature matrices."""

    support: dict[str, torch.Tensor] | torch.Tensor
    support_labels: torch.Tensor  # (N*K,)
    query: dict[str, torch.Tensor] | torch.Tensor | None  # None for supervised batches (BatchSpec)
    query_labels: torch.Tensor  # (N*Q,)
    n_way: int
    meta: dict = field(default_factory=dict)
    encoded: bool = False  # support / query are an encoder's features (cached), not its inputs

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        def move(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
            return x.to(device, non_blocking=non_blocking)

        return Episode(
            move(self.support),
            move(self.support_labels),
            move(self.query),
            move(self.query_labels),
            self.n_way,
            self.meta,
            self.encoded,
        )


Tokenize = Callable[[Sequence[Example]], dict[str, torch.Tensor]]


class EpisodeDataset(torch.utils.data.Dataset):
    """Map-style view of an episode stream: item i is episode i, tokenised."""

    encoded = False  # items hold tokeniser outputs (FeatureEpisodeDataset: features)

    def __init__(self, sampler: EpisodeSampler | BatchSampler | MultiTaskSampler, tokenize: Tokenize, length: int):
        self.sampler, self.tokenize, self.length = sampler, tokenize, length

    def __len__(self) -> int:
        return self.length

    def inputs(self, idx: Sequence[int]) -> dict[str, torch.Tensor] | torch.Tensor:
        data: FewShotDataset = self.sampler.dataset
        return self.tokenize([data[j] for j in idx])

    def __getitem__(self, i: int) -> Episode:
        spec = self.sampler[i]
        return Episode(
            support=self.inputs(spec.support_idx),
            support_labels=torch.as_tensor(spec.support_labels()),
            query=self.inputs(spec.query_idx) if spec.query_idx else None,
            query_labels=torch.as_tensor(spec.query_labels()),
            n_way=spec.n_way,
            meta={"index": i, "classes": spec.classes, **getattr(spec, "extra", {})},
            encoded=self.encoded,
        )


class FeatureEpisodeDataset(EpisodeDataset):
    """The same episode stream over cached features: row j of `features` (M, D) is example j of the
    sampler's dataset, so episode i is (N*K, D) support and (N*Q, D) query matrices."""

    def __init__(self, sampler: EpisodeSampler, features: torch.Tensor, length: int):
        if len(features) != len(sampler.dataset):
            raise ValueError(f"{len(features)} feature rows for a dataset of {len(sampler.dataset)} examples")
        super().__init__(sampler, None, length)  # type: ignore[arg-type]
        self.features = features

    encoded = True

    def inputs(self, idx: Sequence[int]) -> torch.Tensor:
        return self.features[list(idx)]
