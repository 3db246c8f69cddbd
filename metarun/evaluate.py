"""Episodic evaluation with a fixed protocol: mean accuracy and 95% confidence interval, in percent.

For learners with `feature_eval` (metric learners, frozen encoders) every distinct sentence is encoded
once and all episodes are sampled from the cached features; other learners get tokenised episodes.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from metarun.data.collate import EpisodeDataset
from metarun.data.dataset import FewShotDataset
from metarun.data.sampler import EpisodeSampler
from metarun.learners.base import Learner


@dataclass(frozen=True)
class Protocol:
    n_way: int
    k_shot: int
    n_query: int
    episodes: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.n_way}way_{self.k_shot}shot"


def mean_ci95(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% interval (1.96 standard errors)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(len(v)))


def limit_per_class(data: FewShotDataset, max_per_class: int | None, seed: int) -> FewShotDataset:
    """A fixed random subset of at most `max_per_class` examples per class (cheap validation)."""
    if max_per_class is None:
        return data
    rng = np.random.default_rng(seed)
    keep = []
    for c in data.classes:
        idx = data.indices_of(c)
        keep += [idx[j] for j in sorted(rng.permutation(len(idx))[:max_per_class])]
    return FewShotDataset(tuple(data[i] for i in sorted(keep)), f"{data.source}, {max_per_class} per class")


class Evaluator:
    """Evaluate a learner on one dataset under several protocols; returns {key: {acc, ci95, episodes}}."""

    def __init__(self, data: FewShotDataset, protocols: list[Protocol], prefix: str, batch_size: int = 128,
                 max_per_class: int | None = None, progress: bool = True):
        self.data = limit_per_class(data, max_per_class, seed=protocols[0].seed if protocols else 0)
        self.protocols, self.prefix, self.batch_size, self.progress = protocols, prefix, batch_size, progress
        # Build samplers now so impossible protocols (N too large, K+Q too many) fail before training.
        self.samplers = [EpisodeSampler(self.data, p.n_way, p.k_shot, p.n_query, p.seed, role=prefix) for p in protocols]

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
        was_training = learner.training
        learner.eval()
        amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        try:
            if learner.feature_eval:
                with torch.inference_mode(), amp:
                    features = self.encode(learner, device)
            out = {}
            for proto, sampler in zip(self.protocols, self.samplers):
                if learner.feature_eval:
                    accs = self._feature_episodes(learner, features, sampler, proto)
                else:
                    accs = self._episodes(learner, sampler, proto, device, amp)
                acc, ci = mean_ci95(100.0 * np.asarray(accs))
                out[f"{self.prefix}/{proto.key}"] = {"acc": round(acc, 2), "ci95": round(ci, 2), "episodes": len(accs)}
            return out
        finally:
            learner.train(was_training)

    def encode(self, learner: Learner, device: torch.device) -> torch.Tensor:
        """(M,) examples -> (M, D) float32 features on `device`, batched by length to limit padding."""
        order = sorted(range(len(self.data)), key=lambda i: len(self.data[i].text))
        feats: list[torch.Tensor] = [None] * len(order)  # type: ignore[list-item]
        tokenize = learner.encoder.tokenize
        bar = tqdm(range(0, len(order), self.batch_size), desc=f"{self.prefix}: encoding {len(order)} examples",
                   disable=not self.progress, leave=False, unit="batch")
        for start in bar:
            idx = order[start : start + self.batch_size]
            batch = {k: v.to(device) for k, v in tokenize([self.data[i] for i in idx]).items()}
            out = learner.embed(batch).float()
            for j, i in enumerate(idx):
                feats[i] = out[j]
        return torch.stack(feats)

    def _feature_episodes(self, learner, features, sampler, proto) -> list[float]:
        accs = []
        bar = tqdm(range(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress, leave=False)
        with torch.inference_mode():
            for i in bar:
                spec = sampler[i]
                s, q = features[list(spec.support_idx)], features[list(spec.query_idx)]
                logits = learner.predict_from_features(s, torch.as_tensor(spec.support_labels(), device=s.device), q, spec.n_way)
                accs.append((logits.argmax(-1).cpu().numpy() == spec.query_labels()).mean())
                if i % 50 == 0:
                    bar.set_postfix(acc=f"{100 * np.mean(accs):.1f}")
        return accs

    def _episodes(self, learner, sampler, proto, device, amp) -> list[float]:
        episodes = EpisodeDataset(sampler, learner.encoder.tokenize, proto.episodes)
        accs = []
        bar = tqdm(range(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress, leave=False)
        for i in bar:
            ep = episodes[i].to(device)
            with amp:
                logits = learner.predict(ep)
            accs.append((logits.argmax(-1) == ep.query_labels).float().mean().item())
            if i % 20 == 0:
                bar.set_postfix(acc=f"{100 * np.mean(accs):.1f}")
        return accs
