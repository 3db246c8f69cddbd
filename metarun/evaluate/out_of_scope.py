"""Out-of-scope queries (`eval.test.oos_rate`): queries that belong to no class of the data, which a
model should reject. Episodes add oos_rate x Q of them, labelled N (none-of-the-above), drawn from the
data's out-of-scope pool (`data.oos_label`, or CLINC150's own out-of-scope set, `data=clinc_oos`).

Two ways to reject (`eval.test.reject`):
- `nota`: the learner predicts class N itself (`learner.nota=true`); the rejection score is its
  probability.
- `threshold`: any learner; a query is rejected when its largest class probability (the maximum
  softmax probability of Hendrycks & Gimpel 2017, Larson et al.'s "oos-threshold") is below a threshold
  chosen on validation episodes built the same way from the validation classes and the validation
  out-of-scope pool: the one with the best accuracy, out-of-scope counted as a class. The rejection
  score is 1 - that probability.

Metrics over every query of every episode (`oos_metrics`), in percent: in-scope accuracy (in-scope
queries given their class), out-of-scope recall and precision and their F1, and the area under the
ROC curve of the rejection score (threshold-free).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from metarun.data.dataset import FewShotDataset

OOS = "<out-of-scope>"  # the label out-of-scope queries carry inside an evaluator: never a class name
REJECT = ("nota", "threshold")


def with_out_of_scope(data: FewShotDataset, pool: FewShotDataset) -> FewShotDataset:
    """`data` and `pool`'s examples relabelled OOS, in one set (the sampler draws them by that label)."""
    return FewShotDataset(data.examples + tuple(replace(e, label=OOS) for e in pool.examples),
                          f"{data.source} + {pool.source}")


def decide(logits: torch.Tensor, n_way: int, threshold: float | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores whose argmax is the decision, the rejection score of each query, the confidence of each
    decision): a NOTA learner's (Q, N+1) logits as they are (confidence: the decided class's
    probability), or with a threshold its own none-of-the-above probability p0 thresholded (rejected
    when 1 - p0 < threshold; confidence: the class's probability, or p0), or (Q, N) logits whose
    largest probability p is thresholded (rejected when p < threshold; confidence: p for a class, 1 - p
    for a rejection). Both thresholds are compared in log space (decide_by_score), exact near 1."""
    logits = logits.detach().float()
    if threshold is None:  # the learner predicts NOTA as class N
        probs = logits.softmax(-1)
        return logits, probs[:, n_way], probs.gather(-1, logits.argmax(-1, keepdim=True))[:, 0]
    cut = float(np.log(threshold)) if threshold > 0 else -float("inf")
    if logits.shape[-1] == n_way + 1:  # a NOTA learner's own probability, thresholded: reject when 1 - p(NOTA) < t
        probs = logits.softmax(-1)
        in_scope = logits.log_softmax(-1)[:, :n_way].logsumexp(-1)  # log(1 - p(NOTA)), exact near 1
        decided, _ = decide_by_score(logits[:, :n_way], n_way, in_scope, cut)
        rejected = decided.argmax(-1) == n_way
        return decided, probs[:, n_way], torch.where(rejected, probs[:, n_way], probs[:, :n_way].amax(-1))
    logp = logits[:, :n_way].log_softmax(-1)  # the largest log probability, thresholded at log(t)
    decided, conf = decide_by_score(logits, n_way, logp.amax(-1), cut)
    return decided, 1 - logp.exp().amax(-1), conf


def decide_by_score(logits: torch.Tensor, n_way: int, score: torch.Tensor, cut: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores whose argmax is the decision, the confidence of each decision) for (Q, N) logits and an
    in-scope `score` per query: a query goes to N (rejected) exactly when its score is below `cut`;
    confidence as `decide`'s (the largest probability p for a class, 1 - p for a rejection)."""
    logp = logits.detach().float()[:, :n_way].log_softmax(-1)
    rejected = score.to(logp.device) < cut
    column = torch.where(rejected, 1.0, -float("inf"))[:, None]  # log-probabilities never exceed 0
    top = logp.exp().amax(-1)
    return torch.cat([logp, column], -1), torch.where(rejected, 1 - top, top)


THRESHOLD_RULES = ("accuracy", "balanced", "recall")


def choose_threshold(records: list[dict], rule: str = "accuracy", target: float = 0.9) -> float:
    """The threshold on the in-scope probability (the largest class probability, or a NOTA learner's
    1 - p(NOTA)) over `records` of N-way predictions, by `rule` (choose_cut). It is chosen on each
    record's `score`, the log of that probability at full precision (a trained learner's probabilities
    sit within 1e-4 of 1, where the records' 4-decimal `conf` ties them), else on log(`conf`). 2.0
    rejects everything (probabilities never exceed 1)."""
    score = np.concatenate([r["score"] if "score" in r else np.log(np.maximum(r["conf"], 1e-300))
                            for r in records]).astype(np.float64)
    gold = np.concatenate([r["gold"] for r in records])
    pred = np.concatenate([r["pred"] for r in records])
    n_way = np.concatenate([[len(r["classes"])] * len(r["gold"]) for r in records])
    cut = choose_cut(score, gold == n_way, (pred == gold) & (gold != n_way), rule, target)
    return 2.0 if cut == float("inf") else float(np.exp(cut))


def choose_cut(score: np.ndarray, oos: np.ndarray, right: np.ndarray, rule: str = "accuracy",
               target: float = 0.9) -> float:
    """The cut on an in-scope score (higher: more in-scope) below which queries are rejected, chosen on
    validation queries (`oos`: which are out-of-scope; `right`: which in-scope ones the classifier gets
    right) by `rule`: `accuracy` (out-of-scope counted as a class: it follows the validation set's share
    of out-of-scope queries, Larson et al.'s choice), `balanced` (in-scope accuracy + out-of-scope
    recall, each over its own queries: the same cut whatever that share) or `recall` (the best in-scope
    accuracy whose out-of-scope recall reaches `target`); the smallest among equals; inf rejects all."""
    values, inverse = np.unique(np.asarray(score, dtype=np.float64), return_inverse=True)
    oos_at = np.bincount(inverse, oos, len(values))  # per distinct score
    right_at = np.bincount(inverse, right, len(values))
    # cut values[j]: the queries below it (distinct values 0..j-1) are rejected; index len(values): all
    oos_below = np.concatenate([[0.0], np.cumsum(oos_at)])
    right_from = right_at.sum() - np.concatenate([[0.0], np.cumsum(right_at)])
    n_oos, n_in = max(1.0, float(np.sum(oos))), max(1.0, float(np.sum(~np.asarray(oos, dtype=bool))))
    if rule == "accuracy":
        correct = oos_below + right_from
    elif rule == "balanced":
        correct = oos_below / n_oos + right_from / n_in
    else:  # recall: in-scope accuracy among the cuts that reject `target` of the out-of-scope queries
        correct = np.where(oos_below / n_oos >= target - 1e-12, right_from / n_in, -1.0)
    best = int(np.argmax(correct))
    return float(values[best]) if best < len(values) else float("inf")


OOS_SCORES = ("maxprob", "energy", "margin", "mahalanobis", "knn")
FEATURE_SCORES = ("mahalanobis", "knn")  # read the classifier's input features, not only its logits


def logit_score(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """(Q, C) logits -> (Q,) in-scope scores (higher: more in-scope): `maxprob`, the largest softmax
    probability (Hendrycks & Gimpel 2017); `energy`, logsumexp of the logits, the negative free energy
    (Liu et al. 2020); `margin`, the largest logit minus the second."""
    logits = logits.detach().float()
    if kind == "maxprob":
        return logits.softmax(-1).amax(-1)
    if kind == "energy":
        return logits.logsumexp(-1)
    top = logits.topk(min(2, logits.shape[-1]), dim=-1).values
    return top[:, 0] - top[:, -1]


class FeatureScore:
    """In-scope scores from the features of the examples a classifier was fitted on (x: (M, D), y:
    their classes 0..C-1). `mahalanobis`: minus the smallest Mahalanobis distance to a class mean under
    one shared covariance (Lee et al. 2018; for text, Podolskiy et al. 2021 on CLINC150), the covariance
    shrunk towards its mean variance (weight `shrinkage`) so that K x C examples in D dimensions give
    an invertible one; `knn`: the cosine similarity to the nearest fitted example (Sun et al. 2022,
    k = 1: a few examples per class)."""

    def __init__(self, kind: str, x: torch.Tensor, y: torch.Tensor, n_classes: int, shrinkage: float = 0.1):
        self.kind = kind
        x = x.detach().double()
        if kind == "knn":
            self.bank = F.normalize(x, dim=-1)
            return
        self.means = torch.stack([x[y == c].mean(0) for c in range(n_classes)])  # (C, D)
        centred = x - self.means[y]
        cov = centred.T @ centred / len(x)
        d = cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * (cov.trace() / d) * torch.eye(d, dtype=cov.dtype, device=cov.device)
        self.precision = torch.linalg.inv(cov)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        feats = feats.detach().double()
        if self.kind == "knn":
            return (F.normalize(feats, dim=-1) @ self.bank.T).amax(-1).float()
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, for every query f and class mean m at once
        fp, mp = feats @ self.precision, self.means @ self.precision
        dist = (fp * feats).sum(-1, keepdim=True) - 2 * fp @ self.means.T + (mp * self.means).sum(-1)
        return (-dist.amin(-1)).float()


def oos_metrics(records: list[dict]) -> dict:
    """In-scope accuracy, out-of-scope recall, precision, F1 and AUROC (percent, 2 decimals; None where
    undefined, e.g. precision with nothing rejected), over every query of `records`."""
    gold = np.concatenate([r["gold"] for r in records])
    pred = np.concatenate([r["pred"] for r in records])
    n_way = np.concatenate([[len(r["classes"])] * len(r["gold"]) for r in records])
    score = np.concatenate([r["oos"] for r in records]).astype(np.float64)
    is_oos, rejected = gold == n_way, pred == n_way
    hits = float((is_oos & rejected).sum())
    recall = hits / is_oos.sum() if is_oos.any() else None
    precision = hits / rejected.sum() if rejected.any() else None
    if recall is None:
        f1 = None
    else:  # nothing rejected right (so precision may be undefined): F1 0
        f1 = 2 * recall * precision / (recall + precision) if hits else 0.0
    in_scope = np.mean(pred[~is_oos] == gold[~is_oos]) if (~is_oos).any() else None
    return {"in_scope_acc": _percent(in_scope), "oos_recall": _percent(recall), "oos_precision": _percent(precision),
            "oos_f1": _percent(f1), "oos_auroc": _percent(auroc(score[is_oos], score[~is_oos]))}


def _percent(x) -> float | None:
    return None if x is None else round(100.0 * float(x), 2)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """The probability that a positive scores above a negative (ties count half): the area under the
    ROC curve, from the Mann-Whitney rank sum."""
    if not len(positive) or not len(negative):
        return None
    both = np.concatenate([positive, negative])
    values, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # 0-based rank of each distinct value's first copy
    ranks = (first + (counts - 1) / 2.0 + 1)[inverse]  # average 1-based ranks
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
