"""Transfer-learning baseline: supervised pre-training on all training classes, then a fresh
classifier per test episode on frozen features.

- Pre-training: encoder + a classifier over every training class, cross-entropy on mini-batches
  (`sampler=batches`, which `learner=finetune` selects). The classifier is linear ("Baseline") or
  cosine with a fixed scale ("Baseline++"), Chen, Liu, Kira, Wang & Huang, ICLR 2019; the same
  family is the "Finetune" row of FewRel (Han et al. 2018) and of the few-shot text classification
  reality check (Dopierre et al. 2021).
- Test time: the pre-training classifier is dropped; each episode fits a new head on the support
  features: L2 logistic regression (`test_head=logreg`, the linear probe) or a linear / cosine head
  trained for `test_steps` of SGD (`test_head=linear|cosine`). The encoder stays frozen, so
  evaluation caches features (`feature_eval`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice, check_int, check_number
from metarun.learners.base import FeatureLearner, StepOutput, accuracy
from metarun.learners.heads import (
    HEADS,
    cosine_logits,
    fit_head,
    fit_logistic_regression,
)

CLASSIFIERS = ("linear", "cosine")


class ProbedLearner(FeatureLearner):
    """A learner evaluated by fitting a fresh head on each episode's frozen support features."""

    feature_train = False  # pre-trains on supervised batches through the encoder

    def __init__(self, encoder: nn.Module, test_head: str = "logreg", C: float = 1.0, test_steps: int = 100,
                 test_lr: float = 0.01, scale: float = 10.0, head_lr: float | None = 1e-3):
        super().__init__()
        check_number("learner.head_lr", head_lr, 0, low_open=True, null="trainer.lr")
        self.head_lr = head_lr
        check_choice("learner.test_head", test_head, HEADS)
        for key, value in (("scale", scale), ("C", C), ("test_lr", test_lr)):
            check_number(f"learner.{key}", value, 0, low_open=True)
        check_int("learner.test_steps", test_steps)
        self.encoder, self.scale = encoder, float(scale)
        self.test_head, self.C, self.test_steps, self.test_lr = test_head, float(C), test_steps, float(test_lr)

    def param_groups(self, lr: float) -> list[dict]:
        """The pre-trained encoder at trainer.lr; freshly initialised heads (and loss weights, and an
        encoder's `fast_parameters`) at `head_lr`, since a few hundred steps at a fine-tuning rate
        barely move a random head."""
        fresh = {id(p) for p in self.encoder.fast_parameters()}  # e.g. cross-stitch units
        slow = [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in fresh]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in {id(q) for q in slow}]
        return [{"params": slow, "lr": lr}, {"params": rest, "lr": self.head_lr or lr}]

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        if self.test_head == "logreg":
            w, b = fit_logistic_regression(support, support_labels, n_way, C=self.C)
            return query.float() @ w.T + b
        logits = fit_head(
            support, support_labels, n_way, self.test_head, self.test_steps, self.test_lr, scale=self.scale
        )
        return logits(query)


class FineTune(ProbedLearner):


    def __init__(
        self,
        encoder: nn.Module,
        train_classes: Sequence[str],
        classifier: str = "linear",
        scale: float = 10.0,
        test_head: str = "logreg",
        C: float = 1.0,
        test_steps: int = 100,
        test_lr: float = 0.01,
        head_lr: float | None = 1e-3,
        freeze_encoder: bool = False,
    ):
        super().__init__(encoder, test_head, C, test_steps, test_lr, scale, head_lr)
        check_choice("learner.classifier", classifier, CLASSIFIERS)
        self.classifier, self.n_classes = classifier, len(train_classes)
        self.head = nn.Linear(encoder.out_dim, self.n_classes, bias=classifier == "linear")
        if freeze_encoder:
            encoder.requires_grad_(False)

    def _pretrain_logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.classifier == "linear":
            return self.head(feats)
        return cosine_logits(feats, self.head.weight, self.scale)

    def training_loss(self, episode: Episode) -> StepOutput:
        if episode.query is not None or episode.n_way != self.n_classes:
            raise ConfigError(
                f"learner=finetune pre-trains on supervised batches over all {self.n_classes} training classes, "
                f"but got a {episode.n_way}-way episode; use sampler=batches (learner=finetune selects it)."
            )
        logits = self._pretrain_logits(self.encoder(episode.support))
        loss = F.cross_entropy(logits, episode.support_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.support_labels)})
