"""The device loop: placement, autocast, meta-batch accumulation, clipping, optimiser and schedule,
periodic validation, best/last checkpoints, non-finite checks, progress bars and resume."""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from metarun.data.collate import EpisodeDataset
from metarun import distributed
from metarun.distributed import Dist
from metarun.errors import CheckpointError, ConfigError, NonFiniteLossError, check_choice, check_int, check_number
from metarun.callbacks import Callback, default_callbacks
from metarun.evaluate.common import Scores
from metarun.learners.base import Learner
from metarun.tracking.folder.checkpoint import Checkpointer
from metarun.tracking.writers.metrics import MetricsWriter

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("linear", "constant", "cosine")


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done; the next episode index is step * meta_batch
    best_score: float = -math.inf
    best_step: int = -1
    best_val: dict | None = None
    bad_evals: int = 0
    finished: bool = False


def default_threads() -> int:
    """OMP_NUM_THREADS where the environment sets it, else the CPUs this process may use (a scheduler's
    allocation included: os.sched_getaffinity)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r} but CUDA is not available here; use trainer.device=auto or cpu.")
    return torch.device(device)


class Trainer:
    def __init__(
        self,
        max_steps: int = 150,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 10,
        schedule: str = "linear",
        grad_clip: float | None = 1.0,
        meta_batch: int = 1,
        eval_every: int = 50,
        checkpoint_every: int = 50,
        device: str = "auto",
        precision: str = "auto",
        num_workers: int = 0,
        progress: bool = True,
        keep_optimizer: bool = False,
        validate_at_start: bool = True,
        threads: int | None = None,
    ):
        counts = {"max_steps": (max_steps, 0), "meta_batch": (meta_batch, 1), "eval_every": (eval_every, 1),
                  "checkpoint_every": (checkpoint_every, 1), "warmup_steps": (warmup_steps, 0),
                  "num_workers": (num_workers, 0)}
        for key, (value, low) in counts.items():
            check_int(f"trainer.{key}", value, low)
        check_int("trainer.threads", threads, 1, null="the CPUs this process may use")
        check_number("trainer.lr", lr, 0, low_open=True)
        check_number("trainer.weight_decay", weight_decay, 0)
        check_number("trainer.grad_clip", grad_clip, 0, low_open=True, null="no clipping")
        check_choice("trainer.precision", precision, PRECISIONS)
        check_choice("trainer.schedule", schedule, SCHEDULES)
        self.max_steps, self.lr, self.weight_decay, self.warmup_steps = max_steps, lr, weight_decay, warmup_steps
        self.schedule, self.grad_clip, self.meta_batch = schedule, grad_clip, meta_batch
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.num_workers, self.progress = num_workers, progress
        self.keep_optimizer = keep_optimizer  # a finished run's last.pt keeps AdamW's moments (2x the weights)
        self.validate_at_start = validate_at_start  # the untrained model's score at step 0 (logged, not a candidate)
        # CPU threads of torch's kernels: by default the CPUs this process may use (a scheduler's allocation
        # included); fewer when other jobs share the cores (two jobs of 2 threads on 2 cores ran 6x slower)
        self.threads = threads or default_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU.")
        self.precision = precision
        self.dist = Dist()  # rank 0 of 1 until `join_processes`

    def join_processes(self) -> Dist:
        """Join the torchrun process group, if started by torchrun (else rank 0 of 1): each rank takes
        its own GPU, and the meta-batch must give every process a task."""
        dist = distributed.setup(self.device)
        if self.meta_batch < dist.world:
            raise ConfigError(f"trainer.meta_batch={self.meta_batch} gives some of the {dist.world} processes no task; "
                              f"use a meta-batch of at least {dist.world} (a multiple of it balances the work).")
        self.device, self.dist = distributed.local_device(self.device), dist
        return dist

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def evaluate(self, evaluator, learner: Learner) -> dict:
        """Scores of `evaluator` (see metarun.evaluate) on this trainer's device and precision."""
        return evaluator(learner, self.device, self.autocast_dtype)

    def test(self, learner: Learner, evaluators) -> Scores:
        """The test loop of a run and of metarun-eval: every evaluator's scores (with their records), in order."""
        learner.to(self.device)
        scores = Scores()
        for evaluator in evaluators:
            scores.update_from(self.evaluate(evaluator, learner))
        return scores

    def fit(self, learner: Learner, episodes: EpisodeDataset, validate, ckpt: Checkpointer,
            log: MetricsWriter, callbacks: list[Callback] | None = None) -> TrainState:
        """Train for `max_steps` optimiser steps, resuming from `ckpt.last` when it exists (and the
        checkpointer finds this run's config compatible with it), validating with the evaluator
        `validate`; `callbacks` (default: best checkpoint, no early stopping) act on each validation,
        checkpoint and step. Under torchrun each rank trains on its share of every meta-batch; rank 0 writes."""
        dist = self.dist
        callbacks = default_callbacks() if callbacks is None else callbacks
        learner.to(self.device).train()
        groups = learner.optimizer_groups(self.lr)
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay) if groups else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor) if opt else None
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        state = TrainState()
        if (saved := ckpt.resume_state()) is not None:
            state = self._restore(saved, learner, opt, sched, scaler)
            # a run continued to a larger max_steps goes on, unless a callback had stopped it (early stopping)
            state.finished = any(cb.stopped(state) for cb in callbacks)
            tqdm.write(f"resuming from {ckpt.last} at step {state.step}")
        # metrics logged after the checkpoint go; a start that never saved leaves nothing (its step-0 line too)
        log.resume_at(state.step if state.step > 0 else -1)
        if state.step == 0 and self.max_steps > 0 and self.validate_at_start:
            scores = self.evaluate(validate, learner)  # what training starts from: the first point of the curves
            log.write_scores(0, scores)
            if dist.main:
                tqdm.write(f"step 0 (before training): {_brief(scores)}")
        loader = self._loader(episodes, state.step)
        bar = tqdm(total=self.max_steps, initial=state.step, desc="train", unit="step",
                   disable=not (self.progress and dist.main) or self.max_steps == 0)  # max_steps=0: no training, no bar
        while state.step < self.max_steps and not state.finished:
            metrics = self._train_step(learner, loader, opt, sched, scaler, state.step)
            state.step += 1
            log.write(state.step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{100 * metrics['train/acc']:.1f}")
            if state.step % self.eval_every == 0 or state.step == self.max_steps:
                self._validate(learner, validate, state, ckpt, log, callbacks)
            state.finished = state.step >= self.max_steps or state.finished
            if (state.step % self.checkpoint_every == 0 or state.finished) and dist.main:
                # a finished run drops the optimizer's moments unless keep_optimizer (a third of the file)
                keep_opt = opt is not None and (self.keep_optimizer or not state.finished)
                snapshot = self._snapshot(learner, opt if keep_opt else None, sched, scaler, state)
                for cb in callbacks:
                    cb.on_checkpoint(self, state, ckpt, snapshot)
                ckpt.save(ckpt.last, snapshot)
            for cb in callbacks:
                cb.on_step_end(self, state)
        bar.close()
        dist.barrier()  # rank 0's checkpoints are on disk before anyone reads best.pt
        return state

    def _train_step(self, learner, loader, opt, sched, scaler, step: int) -> dict[str, float]:
        losses, extra = [], {}
        episodes = [next(loader).to(self.device, non_blocking=True) for _ in self.dist.mine(self.meta_batch)]
        # One backward per task bounds memory; learners that batch tasks (vmap) take them all at once.
        stop = None
        for group in [episodes] if learner.batch_tasks else [[e] for e in episodes]:
            with self.autocast():
                out = learner.training_step(group)
            if not torch.isfinite(out.loss):
                where = [e.meta.get("index") for e in group]
                stop = f"training loss became {out.loss.item()} at step {step + 1} (episodes {where})"
                break
            scaler.scale(out.loss * len(group) / self.meta_batch).backward()
            losses.append(out.loss.item())
            for k, v in {"acc": float("nan"), **out.metrics}.items():  # learner metrics, e.g. per-task losses
                extra.setdefault(k, []).append(float(v))
        if self.dist.any(stop is not None):  # every process stops together, or the others would wait forever
            raise NonFiniteLossError(
                f"{stop or f'training loss became non-finite in another process at step {step + 1}'}; the run "
                f"stopped. Lower trainer.lr or the learner's inner_lr, keep trainer.grad_clip, or use "
                f"trainer.precision=fp32. Earlier checkpoints are kept."
            )
        if opt is not None:
            self.dist.all_reduce_grads([p for g in opt.param_groups for p in g["params"]])  # sum over ranks
            scaler.unscale_(opt)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
        lr = sched.get_last_lr()[0] if sched else 0.0
        means = self.dist.mean({"loss": losses, **extra})  # over every task of the meta-batch
        return {"train/lr": lr, **{f"train/{k}": v for k, v in means.items()}}

    def _validate(self, learner, validate, state: TrainState, ckpt, log, callbacks) -> None:
        scores = self.evaluate(validate, learner)
        log.write_scores(state.step, scores)
        for cb in callbacks:  # best checkpoint, early stopping
            cb.on_validation(self, learner, state, scores, ckpt)
        if self.dist.main:
            best = f" (best {state.best_score:.2f} at step {state.best_step})" if state.best_step >= 0 else ""
            tqdm.write(f"step {state.step}: {_brief(scores)}{best}")

    def _loader(self, episodes: EpisodeDataset, start_step: int):
        # this rank's tasks of every step: task j of step s is episode s * meta_batch + j
        mine = self.dist.mine(self.meta_batch)
        indices = [s * self.meta_batch + j for s in range(start_step, self.max_steps) for j in mine]
        # A private generator: creating worker iterators must not consume the global torch RNG.
        loader = torch.utils.data.DataLoader(
            episodes, batch_size=None, sampler=indices, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0),
            persistent_workers=False,
        )
        return iter(loader)

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _snapshot(self, learner, opt, sched, scaler, state: TrainState) -> dict:
        return {
            "model": learner.trained_state(),
            "optimizer": opt.state_dict() if opt else None,
            "scheduler": sched.state_dict() if sched else None,
            "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "state": asdict(state),
            "next_episode": state.step * self.meta_batch,
        }

    def _restore(self, saved: dict, learner, opt, sched, scaler) -> TrainState:
        try:
            learner.load_trained_state(saved["model"])
            if opt is not None and saved.get("optimizer") is not None:
                opt.load_state_dict(saved["optimizer"])
            if sched is not None and saved.get("scheduler") is not None:
                sched.load_state_dict(saved["scheduler"])
                for group, lr in zip(opt.param_groups, sched.get_last_lr()):  # a fresh optimizer (a finished
                    group["lr"] = lr  # run continued without its moments) starts at the schedule's lr
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint does not fit this model ({str(e).splitlines()[0][:200]}). The file was kept; "
                f"resume with the config it was written with, or use a new hydra.run.dir."
            ) from None
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if torch.cuda.is_available() and saved["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        return TrainState(**saved["state"])


def _brief(scores: dict[str, dict]) -> str:
    ci = lambda v: "" if v.get("ci95") is None else f" ± {v['ci95']:.2f}"  # noqa: E731  (two decimals, as results)
    return ", ".join(f"{k} {v['acc']:.2f}{ci(v)}" for k, v in scores.items())
