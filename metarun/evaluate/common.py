"""What every evaluation protocol shares: the eval-mode / autocast context, sentence encoding, the
mean with its 95% confidence interval."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from metarun.data.dataset import FewShotDataset
from metarun.learners.base import Learner


class Scores(dict):
    """What an evaluation returns: {key: {acc, ci95, ...}}, with the per-episode records that gave them
    (`records`, by key: `episode_record`) and a few misclassified queries with their nearest support
    example (`mistakes`, by key), so that nothing is read back from the evaluator afterwards."""

    def __init__(self, scores: dict | None = None, records: dict[str, list[dict]] | None = None,
                 mistakes: dict[str, list[dict]] | None = None):
        super().__init__(scores or {})
        self.records, self.mistakes = records or {}, mistakes or {}

    def update_from(self, other: dict) -> "Scores":
        """Add another evaluation's scores, records and mistakes (a later key replaces an earlier one)."""
        self.update(other)
        self.records |= getattr(other, "records", {})
        self.mistakes |= getattr(other, "mistakes", {})
        return self


class Evaluator:
    """An evaluation protocol: `evaluator(learner, device, autocast_dtype) -> Scores`; its constructor
    takes the objects of build_evaluator it needs (evaluate/__init__.py)."""

    feature_cache = None  # a FeatureCache (evaluate/feature_cache.py) when the run's encoder does not train:
    #                       a constructor argument of every protocol
    refiner = None  # the protocol's query refiner (learners/refiners.py): prototype learners read the queries
    zero_shot: bool = False  # true: some of its episodes have K = 0 (the class names alone)
    classes: list[str] = []  # the classes it tests on, and their readable names if the data has them
    class_names: dict[str, str] = {}

    def check(self, learner: Learner) -> None:
        """Refuse, before training, a learner this protocol cannot evaluate (a ConfigError that says what to
        change); protocols that take every learner keep this default."""

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> Scores:
        raise NotImplementedError


@contextmanager
def evaluating(learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None) -> Iterator:
    """The learner in eval mode (restored afterwards); yields the autocast context for forwards."""
    was_training = learner.training
    learner.eval()
    try:
        yield torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    finally:
        learner.train(was_training)


def mean_ci95(values: list[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and half-width of the normal-approximation 95% interval (1.96 standard errors)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:  # no spread from one value: the interval is unknown (null in results.json)
        return float(v.mean()), None
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(len(v)))


def summary(accuracies: list[float] | np.ndarray) -> dict:
    """Accuracies in [0, 1] -> {"acc", "ci95"} in percent, rounded to 2 decimals (ci95 None, JSON null,
    for a single value: one episode or draw has no spread)."""
    acc, ci = mean_ci95(100.0 * np.asarray(accuracies, dtype=np.float64))
    if ci is None:
        warnings.warn("one episode (or draw) gives no confidence interval; ci95 is null. Use at least 2.",
                      stacklevel=2)
    return {"acc": round(acc, 2), "ci95": None if ci is None else round(ci, 2)}


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


def token_lengths(tokenize, examples, chunk: int = 1024) -> list[int]:
    """Tokens per example (the attention mask's count), tokenised in chunks."""
    lengths: list[int] = []
    for start in range(0, len(examples), chunk):
        lengths += tokenize(examples[start : start + chunk])["attention_mask"].sum(-1).tolist()
    return lengths


def encode_examples(learner: Learner, data: FewShotDataset, device: torch.device, batch_size: int,
                    desc: str, progress: bool, sort_by: str = "tokens", cache=None) -> torch.Tensor:
    """(M,) examples -> (M, D) float32 features on `device`, in batches of examples of similar length
    so that little padding is encoded: sorted by token count (`sort_by="tokens"`, one extra pass of
    the tokenizer), or by characters (`"chars"`, what scripts/bench_eval_batch.py compares with).
    With a `cache` (a FeatureCache), features an earlier run stored for the same encoder weights and
    sentences are read from disk instead, and new ones are stored."""
    key = None
    if cache is not None:
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        key = cache.key(learner.encoder, data.examples, device, dtype)
        cached = cache.get(key, len(data))
        if cached is not None:
            return cached.to(device)
    feats = _encode(learner, data, device, batch_size, desc, progress, sort_by)
    if key is not None:
        cache.put(key, feats)
    return feats


def _encode(learner: Learner, data: FewShotDataset, device: torch.device, batch_size: int, desc: str,
            progress: bool, sort_by: str) -> torch.Tensor:
    tokenize = learner.encoder.tokenize
    if sort_by == "tokens":
        lengths = token_lengths(tokenize, data.examples)
    else:
        lengths = [len(e.text) for e in data.examples]
    order = sorted(range(len(data)), key=lengths.__getitem__)
    feats: list[torch.Tensor] = [None] * len(order)  # type: ignore[list-item]
    bar = tqdm(range(0, len(order), batch_size), desc=f"{desc} {len(order)} examples", disable=not progress,
               leave=False, unit="batch")
    for start in bar:
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in tokenize([data[i] for i in idx]).items()}
        out = learner.embed(batch).float()
        for j, i in enumerate(idx):
            feats[i] = out[j]
    return torch.stack(feats)


def episode_record(index: int, classes, query_idx, gold, logits: torch.Tensor,
                   conf: torch.Tensor | None = None) -> dict:
    """One test episode as tracking/folder/episodes.py stores it: `logits` (Q, N or N+1) of the learner's
    prediction; `query_idx` the queries' indices in the evaluated dataset; `conf` the probability of each
    decision (default: the softmax of `logits` at the prediction; a threshold rule gives its own)."""
    logits = logits.detach().float().cpu()
    pred = logits.argmax(-1)  # the prediction accuracy counts, whatever the probabilities round to
    conf = logits.softmax(-1).gather(-1, pred[:, None])[:, 0] if conf is None else conf.detach().float().cpu()
    return {"episode": int(index), "classes": [str(c) for c in classes], "query": [int(i) for i in query_idx],
            "gold": [int(g) for g in gold], "pred": pred.tolist(), "conf": [round(float(c), 4) for c in conf]}


def record_accuracy(record: dict) -> float:
    """An episode record's accuracy in [0, 1]: the share of its queries predicted right."""
    return float(np.mean(np.equal(record["gold"], record["pred"])))
