"""Multi-task learning: a shared encoder (hard parameter sharing), or per-task towers over shared
bottom layers joined by cross-stitch units (`sharing=cross_stitch`, soft sharing; see
`models/cross_stitch.py`), and one linear head per task.

Training steps come from `sampler=multitask` (labels `task/class`, one batch per task); the task
losses are combined by `weighting` (see `mtl.py`: ew, uw, dwa, gradnorm, pcgrad). Evaluation asks
the transfer question: the shared encoder, frozen, with a fresh head per few-shot episode on the
target's test classes (as `finetune`), plus each task's accuracy on its held-out examples
(`task_accuracy`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.multitask import task_of
from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice
from metarun.learners.base import StepOutput, accuracy
from metarun.learners.transfer.finetune import ProbedLearner
from metarun.learners.transfer.mtl import (
    WEIGHTINGS,
    dwa_weights,
    gradnorm_loss,
    pcgrad,
    uncertainty_weighted,
)
from metarun.models.cross_stitch import CrossStitchEncoder

SHARINGS = ("hard", "cross_stitch")


class MultiTask(ProbedLearner):
    task_heads = True

    def __init__(self, encoder: nn.Module, train_classes: Sequence[str], weighting: str = "ew",
                 dwa_temperature: float = 2.0, dwa_window: int = 20, gradnorm_alpha: float = 1.5,
                 test_head: str = "logreg", C: float = 1.0, test_steps: int = 100, test_lr: float = 0.01,
                 head_lr: float | None = 1e-3, sharing: str = "hard", tower_layers: int = 2,
                 stitch_self_weight: float = 0.9, eval_tower: str | None = None):
        check_choice("learner.weighting", weighting, WEIGHTINGS)
        check_choice("learner.sharing", sharing, SHARINGS)
        tasks = sorted({task_of(c) for c in train_classes})
        if len(tasks) < 2 and weighting != "ew":
            raise ConfigError(f"learner.weighting={weighting} balances several tasks, but the data has one "
                              f"({tasks}); use data=intents3 or learner.weighting=ew.")
        if sharing == "cross_stitch":
            encoder = CrossStitchEncoder(encoder, tasks, tower_layers, stitch_self_weight, eval_tower)
        super().__init__(encoder, test_head, C, test_steps, test_lr, head_lr=head_lr)
        self.tasks, self.sharing = tasks, sharing
        # a task's label k is the k-th of its classes in `train_classes` order (as the sampler assigns)
        self.task_classes = {t: [c for c in train_classes if task_of(c) == t] for t in self.tasks}
        self.heads = nn.ModuleDict({t: nn.Linear(encoder.out_dim, len(cs)) for t, cs in self.task_classes.items()})
        self.weighting, self.dwa_temperature, self.dwa_window = weighting, dwa_temperature, dwa_window
        self.gradnorm_alpha = gradnorm_alpha
        n = len(self.tasks)
        if weighting == "uw":
            self.log_vars = nn.Parameter(torch.zeros(n))
        if weighting == "gradnorm":
            self.weight_logits = nn.Parameter(torch.zeros(n))  # weights = T * softmax: positive, sum T
            self.register_buffer("initial_losses", torch.zeros(n))
        if weighting == "dwa":
            # running sums of the current window and the mean losses of the last two windows
            self.register_buffer("dwa_sum", torch.zeros(n))
            self.register_buffer("dwa_count", torch.zeros(()))
            self.register_buffer("dwa_means", torch.zeros(2, n))

    # -- training ----------------------------------------------------------------------------------
    def _features(self, episode: Episode) -> torch.Tensor:
        """(B, D) shared features, or (T, B, D) with one row per task tower (cross-stitch)."""
        return self.encoder.towers(episode.support) if self.sharing == "cross_stitch" else self.encoder(episode.support)

    def _task_losses(self, feats: torch.Tensor, episode: Episode) -> tuple[torch.Tensor, list[str], float]:
        slices = episode.meta.get("tasks")
        if slices is None:
            raise ConfigError("learner=multitask trains on multi-task batches; use sampler=multitask "
                              "(learner=multitask selects it) with multi-task data such as data=intents3.")
        if self.weighting != "ew" and len(slices) != len(self.tasks):
            raise ConfigError(f"learner.weighting={self.weighting} needs every task in every step; "
                              f"set sampler.tasks_per_step=all.")
        losses, names, correct = [], [], 0.0
        for task, start, end in slices:
            rows = feats[self.tasks.index(task), start:end] if feats.dim() == 3 else feats[start:end]
            logits = self.heads[task](rows)
            y = episode.support_labels[start:end]
            losses.append(F.cross_entropy(logits, y))
            names.append(task)
            correct += accuracy(logits.detach(), y) * (end - start)
        return torch.stack(losses), names, correct / len(episode.support_labels)

    def training_loss(self, episode: Episode) -> StepOutput:
        feats = self._features(episode)
        losses, names, acc = self._task_losses(feats, episode)
        metrics = {"acc": acc, **{f"loss_{t}": v for t, v in zip(names, losses.detach().tolist())}}
        if self.weighting == "ew":
            loss = losses.sum()
        elif self.weighting == "uw":
            loss = uncertainty_weighted(losses, self.log_vars)
        elif self.weighting == "dwa":
            loss = (self._dwa_update(losses.detach()) * losses).sum()
        elif self.weighting == "gradnorm":
            loss = self._gradnorm(feats, losses, episode)
        else:
            loss, metrics["conflicts"] = self._pcgrad(feats, losses, episode)
        if self.weighting in ("dwa", "gradnorm"):
            metrics.update({f"w_{t}": w for t, w in zip(names, self.current_weights().tolist())})
        return StepOutput(loss, metrics)

    def current_weights(self) -> torch.Tensor:
        if self.weighting == "gradnorm":
            return len(self.tasks) * torch.softmax(self.weight_logits.detach(), 0)
        if self.weighting == "dwa" and bool((self.dwa_means[1] > 0).all()):
            return dwa_weights(self.dwa_means[0], self.dwa_means[1], self.dwa_temperature)
        return torch.ones(len(self.tasks), device=next(self.parameters()).device)

    def _dwa_update(self, losses: torch.Tensor) -> torch.Tensor:
        weights = self.current_weights()
        if self.training:
            self.dwa_sum += losses
            self.dwa_count += 1
            if self.dwa_count >= self.dwa_window:  # close the window: shift (previous, before)
                self.dwa_means[1] = self.dwa_means[0]
                self.dwa_means[0] = self.dwa_sum / self.dwa_count
                self.dwa_sum.zero_()
                self.dwa_count.zero_()
        return weights

    def _gradnorm(self, feats: torch.Tensor, losses: torch.Tensor, episode: Episode) -> torch.Tensor:
        if bool((self.initial_losses == 0).any()):
            self.initial_losses.copy_(losses.detach())
        weights = len(self.tasks) * torch.softmax(self.weight_logits, 0)
        norms = torch.stack([torch.autograd.grad(loss, feats, retain_graph=True)[0].norm() for loss in losses])
        # the network trains on the weighted sum (weights as constants); the weights on L_grad
        return (weights.detach() * losses).sum() + gradnorm_loss(weights, norms, losses, self.initial_losses,
                                                                 self.gradnorm_alpha)

    def _pcgrad(self, feats: torch.Tensor, losses: torch.Tensor, episode: Episode) -> tuple[torch.Tensor, int]:
        """-> surrogate loss, number of task pairs whose gradients conflict (negative dot product)."""
        shared = [p for p in self.encoder.parameters() if p.requires_grad]
        flat = []
        for loss in losses:
            g = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            flat.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten()
                                   for gi, p in zip(g, shared)]))
        conflicts = sum(int(flat[i] @ flat[j] < 0) for i in range(len(flat)) for j in range(i + 1, len(flat)))
        gen = torch.Generator().manual_seed(int(episode.meta.get("index", 0)))
        combined = pcgrad(flat, gen).split([p.numel() for p in shared])
        # heads: their own task's gradient (features as constants); shared: the projected gradient
        head_loss, _, _ = self._task_losses(feats.detach(), episode)
        surrogate = sum((p * g.view_as(p)).sum() for p, g in zip(shared, combined))
        loss = head_loss.sum() + surrogate - surrogate.detach() + (losses.sum() - head_loss.sum()).detach()
        return loss, conflicts

    # -- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def task_accuracy(self, task: str, feats: torch.Tensor, labels: Sequence[str]) -> float:
        """Accuracy of the task's own head on features of examples labelled `task/class`."""
        position = {c: k for k, c in enumerate(self.task_classes[task])}
        y = torch.tensor([position[label] for label in labels], device=feats.device)
        return accuracy(self.heads[task](feats.to(self.heads[task].weight.dtype)), y)
