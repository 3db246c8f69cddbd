"""Episodic evaluation with a fixed protocol (`eval=episodic`, `fewrel_official`): N-way K-shot
episodes, mean accuracy and 95% confidence interval over episodes, in percent.

For learners with `feature_eval` (metric learners, frozen encoders) every distinct sentence is encoded
once and all episodes are sampled from the cached features; other learners get tokenised episodes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from metarun.data.collate import EpisodeDataset
from metarun.data.dataset import DataSplits, FewShotDataset
from metarun.data.sampler import EpisodeSampler
from metarun.distributed import Dist
from metarun.evaluate.common import (
    Evaluator,
    encode_examples,
    episode_record,
    evaluating,
    limit_per_class,
    record_accuracy,
    summary,
)
from metarun.errors import ConfigError, check_int
from metarun.learners.base import Learner

log = logging.getLogger("metarun")


@dataclass(frozen=True)
class Protocol:
    n_way: int
    k_shot: int
    n_query: int
    episodes: int
    seed: int
    single_query: bool = False  # one query per episode (FewRel's official protocol) instead of n_query per class
    na_rate: int = 0  # none-of-the-above queries: na_rate * n_query per episode (FewRel 2.0)

    @property
    def key(self) -> str:
        return f"{self.n_way}way_{self.k_shot}shot" + (f"_na{self.na_rate}" if self.na_rate else "")


def _as_list(x) -> list:
    return list(x) if isinstance(x, Sequence) and not isinstance(x, str) else [x]


class EpisodicEvaluator(Evaluator):
    """Evaluate a learner on one dataset under every (n_way, shot) protocol; returns
    {"<prefix>/<N>way_<K>shot": {acc, ci95, episodes}}. The config (`eval.val`, `eval.test`) gives the
    protocol; the runner passes the run's split of that role (`data`), or `target`, another dataset
    whose test classes are used instead (cross-dataset transfer: `+data@eval.test.data=banking77`)."""

    def __init__(self, data: FewShotDataset, prefix: str, seed: int, n_way: int | Sequence[int] = 5,
                 shots: int | Sequence[int] = 5, n_query: int = 5, episodes: int = 600,
                 max_per_class: int | None = None, na_rate: int = 0, single_query: bool = False,
                 transductive_steps: int = 0, batch_size: int = 64, progress: bool = True, dist: Dist = Dist(),
                 target: DataSplits | None = None, feature_cache=None):
        for key, value, low in (("episodes", episodes, 1), ("n_query", n_query, 1), ("na_rate", na_rate, 0),
                                ("transductive_steps", transductive_steps, 0)):
            check_int(f"eval.{prefix}.{key}", value, low)
        check_int(f"eval.{prefix}.max_per_class", max_per_class, 1, null="all")
        for key, values in (("n_way", _as_list(n_way)), ("shots", _as_list(shots))):
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise ConfigError(f"eval.{prefix}.{key}={values!r} is not valid; give positive whole numbers, "
                                  f"e.g. eval.{prefix}.{key}=[1,5].")
        if target is not None:  # that dataset's split of this role (val / test), or all it has (a FewRel file)
            split = getattr(target, prefix, None)
            data = split if split is not None and split.classes else target.test
            what = prefix if data is split else "test"
            log.info("%s episodes from %s (%d %s classes)", prefix, target.name, len(data.classes), what)
        protocols = [Protocol(int(n), int(k), int(n_query), int(episodes), seed, bool(single_query), int(na_rate))
                     for n in _as_list(n_way) for k in _as_list(shots)]
        self.data = limit_per_class(data, max_per_class, seed=seed)
        self.classes, self.class_names = list(data.classes), dict(target.class_names) if target is not None else {}
        self.protocols, self.prefix, self.batch_size, self.dist = protocols, prefix, batch_size, dist
        self.progress = progress and dist.main
        self.feature_cache = feature_cache
        self.transductive_steps = transductive_steps  # soft k-means steps with the queries (transductive learners)
        # Build samplers now so impossible protocols (N too large, K+Q too many) fail before training.
        self.samplers = [EpisodeSampler(self.data, p.n_way, p.k_shot, p.n_query, p.seed, role=prefix,
                                        single_query=p.single_query, na_rate=p.na_rate) for p in protocols]

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
        with evaluating(learner, device, autocast_dtype) as amp:
            if learner.feature_eval:
                with torch.inference_mode(), amp:
                    features = self.encode(learner, device)
            out, self.records = {}, {}
            for proto, sampler in zip(self.protocols, self.samplers):
                if learner.feature_eval:
                    records = self._feature_episodes(learner, features, sampler, proto)
                else:
                    records = self._episodes(learner, sampler, proto, device, amp)
                accs = [record_accuracy(r) for r in records]
                key = f"{self.prefix}/{proto.key}"
                out[key], self.records[key] = {**summary(accs), "episodes": len(accs)}, records
            return out

    def encode(self, learner: Learner, device: torch.device) -> torch.Tensor:
        return encode_examples(learner, self.data, device, self.batch_size, f"{self.prefix}: encoding", self.progress,
                               cache=self.feature_cache)

    def _feature_episodes(self, learner, features, sampler, proto) -> list[dict]:
        """Every episode's record (`episode_record`), from cached features."""
        transductive = {"transductive_steps": self.transductive_steps} if self.transductive_steps else {}
        records, correct = [], []  # this rank's episodes; gathered in episode order
        bar = tqdm(self.dist.mine(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress,
                   leave=False)
        with torch.inference_mode():
            for i in bar:
                spec = sampler[i]
                s, q = features[list(spec.support_idx)], features[list(spec.query_idx)]
                names = {"classes": list(spec.classes)} if learner.reads_class_names else {}
                logits = learner.predict_from_features(s, torch.as_tensor(spec.support_labels(), device=s.device), q,
                                                       spec.n_way, **transductive, **names)
                records.append(episode_record(i, spec.classes, spec.query_idx, spec.query_labels(), logits))
                correct.append(record_accuracy(records[-1]))
                if i % 50 == 0:
                    bar.set_postfix(acc=f"{100 * np.mean(correct):.1f}", refresh=False)  # drawn with the next count
        return self.dist.gather(records, proto.episodes)

    def _episodes(self, learner, sampler, proto, device, amp) -> list[dict]:
        """Every episode's record, each episode's text through the learner (it adapts per episode)."""
        episodes = EpisodeDataset(sampler, learner.encoder.tokenize, proto.episodes)
        records, correct = [], []
        bar = tqdm(self.dist.mine(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress,
                   leave=False)
        for i in bar:
            ep = episodes[i].to(device)
            with amp:
                logits = learner.predict(ep)
            spec = sampler[i]
            records.append(episode_record(i, spec.classes, spec.query_idx, ep.query_labels.tolist(), logits))
            correct.append(record_accuracy(records[-1]))
            if i % 20 == 0:
                bar.set_postfix(acc=f"{100 * np.mean(correct):.1f}", refresh=False)  # drawn with the next count
        return self.dist.gather(records, proto.episodes)


