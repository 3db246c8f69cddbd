"""Trainer callbacks: what the training loop does at fixed points beyond stepping, chosen in the
`callbacks` config group (lightning-hydra-template's habit): `configs/callbacks/default.yaml` keeps the
best checkpoint on validation and stops early after `patience` evaluations without a new best.

The loop calls, in the order the config lists them:
- `on_validation(trainer, learner, state, scores, ckpt)` after each validation (scores logged);
- `on_checkpoint(trainer, state, ckpt, snapshot)` just before `last.pt` is written;
- `on_step_end(trainer, state)` after each optimiser step and its checkpoint;
- `stopped(state)` on resume: whether the saved state had already stopped the run.

Rank 0 alone writes files; every rank runs every hook (so all stop together).
"""

from __future__ import annotations

from tqdm.auto import tqdm

from metarun.errors import ConfigError, check_int


class Callback:
    def on_validation(self, trainer, learner, state, scores: dict, ckpt) -> None:
        pass

    def on_checkpoint(self, trainer, state, ckpt, snapshot: dict) -> None:
        pass

    def on_step_end(self, trainer, state) -> None:
        pass

    def stopped(self, state) -> bool:
        return False


def mean_score(scores: dict[str, dict]) -> float:
    """The validation score a run selects on: the mean accuracy over the validation settings."""
    return sum(v["acc"] for v in scores.values()) / len(scores)


class BestCheckpoint(Callback):
    """Keeps `best.pt`, the weights with the highest mean validation accuracy, which the run tests;
    counts evaluations without a new best (`state.bad_evals`, read by EarlyStopping)."""

    def on_validation(self, trainer, learner, state, scores, ckpt) -> None:
        score = mean_score(scores)
        if score > state.best_score:
            state.best_score, state.best_step, state.best_val, state.bad_evals = score, state.step, dict(scores), 0
            if trainer.dist.main:
                ckpt.save(ckpt.best, {"model": learner.trained_state(), "step": state.step, "score": score})
        else:
            state.bad_evals += 1


class EarlyStopping(Callback):
    """Stops training after `patience` evaluations without a new best (null: never)."""

    def __init__(self, patience: int | None = None):
        check_int("callbacks.early_stopping.patience", patience, 1, null="never stop early")
        self.patience = patience

    def on_validation(self, trainer, learner, state, scores, ckpt) -> None:
        if self.stopped(state) and not state.finished:
            tqdm.write(f"early stopping at step {state.step}: no improvement in {state.bad_evals} evaluations")
            state.finished = True

    def stopped(self, state) -> bool:
        return self.patience is not None and state.bad_evals >= self.patience


def build_callbacks(nodes) -> list[Callback]:
    """The callbacks of the config group `callbacks` (a mapping name -> node), in the config's order."""
    from metarun.config import build, import_target

    callbacks = []
    for key, node in (nodes or {}).items():
        if node is None:  # `~callbacks.early_stopping` or callbacks.early_stopping=null: left out
            continue
        cls = import_target(node["_target_"], "callbacks")
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise ConfigError(f"callbacks.{key}._target_={node['_target_']} is not a metarun Callback "
                              f"(metarun.callbacks.Callback).")
        callbacks.append(build(node, f"callbacks.{key}"))
    return callbacks


def default_callbacks(patience: int | None = None) -> list[Callback]:
    """What `configs/callbacks/default.yaml` builds: for code that drives a Trainer without a config."""
    return [BestCheckpoint(), EarlyStopping(patience)]
