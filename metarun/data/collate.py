"""Turn episode specs into tensors: look up examples, tokenise, pad (runs in DataLoader workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from metarun.data.dataset import Example, FewShotDataset
from metarun.data.sampler import BatchSampler, Episode, EpisodeSampler, MultiTaskSampler

Tokenize = Callable[[Sequence[Example]], dict[str, torch.Tensor]]


class EpisodeDataset(torch.utils.data.Dataset):
    """Map-style view of an episode stream: item i is episode i, tokenised."""

    def __init__(self, sampler: EpisodeSampler | BatchSampler | MultiTaskSampler, tokenize: Tokenize, length: int):
        self.sampler, self.tokenize, self.length = sampler, tokenize, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Episode:
        spec = self.sampler[i]
        data: FewShotDataset = self.sampler.dataset
        return Episode(
            support=self.tokenize([data[j] for j in spec.support_idx]),
            support_labels=torch.as_tensor(spec.support_labels()),
            query=self.tokenize([data[j] for j in spec.query_idx]) if spec.query_idx else None,
            query_labels=torch.as_tensor(spec.query_labels()),
            n_way=spec.n_way,
            meta={"index": i, "classes": spec.classes, **getattr(spec, "extra", {})},
        )
