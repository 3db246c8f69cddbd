"""Episodic evaluation with a fixed protocol: mean accuracy and 95% confidence interval, in percent.

For learners with `feature_eval` (metric learners, frozen encoders) every distinct sentence is encoded
once and all episodes are sampled from the cached features; other learners get tokenised episodes.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from metarun.data.collate import EpisodeDataset
from metarun.data.dataset import FewShotDataset, LabelledSplits
from metarun.data.sampler import EpisodeSampler
from metarun.distributed import Dist
from metarun.errors import ConfigError, DataError, check_choice
from metarun.learners.base import Learner
from metarun.learners.finetune import FineTune
from metarun.learners.heads import fit_logistic_regression


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


def encode_examples(learner: Learner, data: FewShotDataset, device: torch.device, batch_size: int,
                    desc: str, progress: bool) -> torch.Tensor:
    """(M,) examples -> (M, D) float32 features on `device`, batched by length to limit padding."""
    order = sorted(range(len(data)), key=lambda i: len(data[i].text))
    feats: list[torch.Tensor] = [None] * len(order)  # type: ignore[list-item]
    tokenize = learner.encoder.tokenize
    bar = tqdm(range(0, len(order), batch_size), desc=f"{desc} {len(order)} examples", disable=not progress,
               leave=False, unit="batch")
    for start in bar:
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in tokenize([data[i] for i in idx]).items()}
        out = learner.embed(batch).float()
        for j, i in enumerate(idx):
            feats[i] = out[j]
    return torch.stack(feats)


class Evaluator:
    """Evaluate a learner on one dataset under several protocols; returns {key: {acc, ci95, episodes}}."""

    def __init__(self, data: FewShotDataset, protocols: list[Protocol], prefix: str, batch_size: int = 128,
                 max_per_class: int | None = None, progress: bool = True, dist: Dist = Dist()):
        self.data = limit_per_class(data, max_per_class, seed=protocols[0].seed if protocols else 0)
        self.protocols, self.prefix, self.batch_size, self.dist = protocols, prefix, batch_size, dist
        self.progress = progress and dist.main
        # Build samplers now so impossible protocols (N too large, K+Q too many) fail before training.
        self.samplers = [EpisodeSampler(self.data, p.n_way, p.k_shot, p.n_query, p.seed, role=prefix,
                                        single_query=p.single_query, na_rate=p.na_rate) for p in protocols]

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
        return encode_examples(learner, self.data, device, self.batch_size, f"{self.prefix}: encoding", self.progress)

    def _feature_episodes(self, learner, features, sampler, proto) -> list[float]:
        accs = []  # this rank's episodes; gathered in episode order
        bar = tqdm(self.dist.mine(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress,
                   leave=False)
        with torch.inference_mode():
            for i in bar:
                spec = sampler[i]
                s, q = features[list(spec.support_idx)], features[list(spec.query_idx)]
                logits = learner.predict_from_features(s, torch.as_tensor(spec.support_labels(), device=s.device), q, spec.n_way)
                accs.append((logits.argmax(-1).cpu().numpy() == spec.query_labels()).mean())
                if i % 50 == 0:
                    bar.set_postfix(acc=f"{100 * np.mean(accs):.1f}")
        return self.dist.gather(accs, proto.episodes)

    def _episodes(self, learner, sampler, proto, device, amp) -> list[float]:
        episodes = EpisodeDataset(sampler, learner.encoder.tokenize, proto.episodes)
        accs = []
        bar = tqdm(self.dist.mine(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress,
                   leave=False)
        for i in bar:
            ep = episodes[i].to(device)
            with amp:
                logits = learner.predict(ep)
            accs.append((logits.argmax(-1) == ep.query_labels).float().mean().item())
            if i % 20 == 0:
                bar.set_postfix(acc=f"{100 * np.mean(accs):.1f}")
        return self.dist.gather(accs, proto.episodes)


PER_CLASS_HEADS = ("logreg", "finetune")


@dataclass(frozen=True)
class DrawFineTuning:
    """`eval.test.head=finetune`: encoder + linear classifier trained on each draw's K x C examples
    (the "RoBERTa + classifier" rows of the DNNC / CPFT tables), AdamW, shuffled mini-batches."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-5       # encoder
    head_lr: float = 1e-3  # fresh classifier
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0


class PerClassEvaluator:
    """"K labelled examples for every class" (the protocol of MTEB classification and of the
    few-shot intent detection tables of DNNC / CPFT): for each draw, K pool examples per class,
    a classifier, accuracy on the whole test set. The classifier is an L2 logistic regression on
    frozen features (`head=logreg`), or the encoder fine-tuned with a linear classifier on the
    draw (`head=finetune`, a fresh copy of the encoder per draw). Reports the mean and 95% CI over
    draws, and every draw's accuracy."""

    def __init__(self, data: LabelledSplits, shots: list[int], draws: int, seed: int, C: float = 1.0,
                 max_iter: int = 100, prefix: str = "test", batch_size: int = 128, progress: bool = True,
                 head: str = "logreg", finetune: DrawFineTuning | None = None):
        if not isinstance(draws, int) or draws < 1:
            raise ConfigError(f"eval.test.draws must be a positive integer, got {draws!r}.")
        check_choice("eval.test.head", head, PER_CLASS_HEADS)
        for k in shots:
            if not isinstance(k, int) or k < 1:
                raise ConfigError(f"eval.test.shots must be positive integers, got {k!r}.")
            short = [(c, data.pool.count(c)) for c in data.test.classes if data.pool.count(c) < k]
            if short:
                listing = ", ".join(f"{c!r} has {n}" for c, n in short[:5])
                raise DataError(f"{k} examples per class are needed from {data.pool.source}, but {listing}; "
                                f"lower eval.test.shots.")
        self.data, self.shots, self.draws, self.seed, self.C, self.max_iter = data, shots, draws, seed, C, max_iter
        self.prefix, self.batch_size, self.progress = prefix, batch_size, progress
        self.head, self.finetune = head, finetune or DrawFineTuning()
        self.classes = data.test.classes
        self.position = {c: i for i, c in enumerate(self.classes)}

    def draw(self, k: int, d: int) -> list[int]:
        """Pool indices of draw `d`: `k` per class, a pure function of (seed, k, d)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, k, d]))
        idx = []
        for c in self.classes:
            pool = self.data.pool.indices_of(c)
            idx += [pool[j] for j in sorted(rng.choice(len(pool), size=k, replace=False))]
        return idx

    def labels(self, examples, device) -> torch.Tensor:
        return torch.tensor([self.position[e.label] for e in examples], device=device)

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
        was_training = learner.training
        learner.eval()
        amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        try:
            draws = {(k, d): self.draw(k, d) for k in self.shots for d in range(self.draws)}
            test_y = self.labels(self.data.test.examples, device)
            if self.head == "logreg":
                accuracies = self._logreg_draws(learner, draws, test_y, device, amp)
            else:
                accuracies = {kd: self._finetuned_draw(learner, idx, test_y, device, amp, kd)
                              for kd, idx in tqdm(draws.items(), desc=f"{self.prefix}: fine-tuning per draw",
                                                  disable=not self.progress, leave=False)}
            out = {}
            for k in self.shots:
                accs = [accuracies[k, d] for d in range(self.draws)]
                acc, ci = mean_ci95(100.0 * np.asarray(accs))
                out[f"{self.prefix}/{self.data.name}_{k}per_class"] = {
                    "acc": round(acc, 2), "ci95": round(ci, 2), "draws": len(accs),
                    "per_draw": [round(100 * a, 2) for a in accs]}
            return out
        finally:
            learner.train(was_training)

    def _logreg_draws(self, learner, draws, test_y, device, amp) -> dict:
        """Encode every pool example any draw uses, and the test set, once; one regression per draw."""
        needed = sorted({i for idx in draws.values() for i in idx})
        pool = FewShotDataset(tuple(self.data.pool[i] for i in needed), self.data.pool.source)
        with torch.inference_mode(), amp:
            pool_feats = encode_examples(learner, pool, device, self.batch_size, f"{self.prefix}: encoding pool", self.progress)
            test_feats = encode_examples(learner, self.data.test, device, self.batch_size, f"{self.prefix}: encoding test", self.progress)
        row = {i: r for r, i in enumerate(needed)}
        out = {}
        for (k, d), idx in tqdm(draws.items(), desc=f"{self.prefix}: per-class draws", disable=not self.progress, leave=False):
            x = pool_feats[[row[i] for i in idx]]
            y = self.labels([self.data.pool[i] for i in idx], device)
            w, b = fit_logistic_regression(x, y, len(self.classes), C=self.C, max_iter=self.max_iter)
            out[k, d] = ((test_feats @ w.T + b).argmax(-1) == test_y).float().mean().item()
        return out

    def _finetuned_draw(self, learner, idx: list[int], test_y, device, amp, kd: tuple[int, int]) -> float:
        """A copy of the learner's encoder and a new linear classifier, trained on the draw's examples."""
        spec = self.finetune
        model = FineTune(copy.deepcopy(learner.encoder).requires_grad_(True), self.classes, head_lr=spec.head_lr)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, *kd]).generate_state(1)[0]))
        torch.nn.init.normal_(model.head.weight, std=0.02, generator=generator)  # on the CPU, before moving
        torch.nn.init.zeros_(model.head.bias)
        model.to(device).train()
        opt = torch.optim.AdamW(model.param_groups(spec.lr), weight_decay=spec.weight_decay)
        examples = [self.data.pool[i] for i in idx]
        tokenize = learner.encoder.tokenize
        for _ in range(spec.epochs):
            for batch in torch.randperm(len(examples), generator=generator).split(spec.batch_size):
                chosen = [examples[i] for i in batch.tolist()]
                inputs = {k: v.to(device) for k, v in tokenize(chosen).items()}
                with amp:
                    logits = model.head(model.encoder(inputs))
                loss = torch.nn.functional.cross_entropy(logits.float(), self.labels(chosen, device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                opt.step()
        model.eval()
        with torch.inference_mode(), amp:
            feats = encode_examples(model, self.data.test, device, self.batch_size, f"{self.prefix}: encoding test", False)
            return (model.head(feats.to(model.head.weight.dtype)).argmax(-1) == test_y).float().mean().item()


def heldout_task_accuracy(learner: Learner, heldout: dict[str, FewShotDataset], device: torch.device,
                          batch_size: int = 128, progress: bool = True,
                          autocast_dtype: torch.dtype | None = None) -> dict:
    """Multi-task learners: each task's head on that task's held-out examples -> {test/task_<t>: ...},
    accuracy with a binomial 95% interval over examples."""
    was_training = learner.training
    learner.eval()
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    out = {}
    try:
        for task, data in heldout.items():
            if len(data) == 0:
                continue
            with torch.inference_mode(), amp:
                feats = encode_examples(learner, data, device, batch_size, f"held-out {task}: encoding", progress)
            acc = learner.task_accuracy(task, feats, [e.label for e in data.examples])
            ci = 1.96 * math.sqrt(acc * (1 - acc) / len(data))  # binomial normal approximation
            out[f"test/task_{task}"] = {"acc": round(100 * acc, 2), "ci95": round(100 * ci, 2), "examples": len(data)}
        return out
    finally:
        learner.train(was_training)
