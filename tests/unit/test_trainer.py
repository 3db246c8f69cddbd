import pytest
import torch
from torch import nn

from metarun.callbacks import Callback, EarlyStopping, default_callbacks
from metarun.data.collate import Episode
from metarun.errors import CheckpointError, ConfigError, NonFiniteLossError
from metarun.learners.base import Learner, StepOutput
from metarun.tracking.folder.checkpoint import Checkpointer
from metarun.tracking.writers.metrics import MetricsWriter
from metarun.trainer import Trainer


class Quadratic(Learner):
    """Loss (w - 3)^2, or NaN from step `nan_at` on."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls, self.nan_at = 0, nan_at

    def training_loss(self, episode):
        self.calls += 1
        loss = (self.w - 3) ** 2
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss, {"acc": 0.0})


class Episodes(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        t = torch.zeros(1)
        return Episode(t, t.long(), t, t.long(), 1, {"index": i})


def distance_to_optimum(learner):
    return {"val/x": {"acc": -abs(learner.w.item() - 3), "ci95": 0.0, "episodes": 1}}


def fit(tmp_path, learner, val=distance_to_optimum, patience=None, **kw):
    trainer = Trainer(device="cpu", progress=False, warmup_steps=0, schedule="constant", grad_clip=None, **kw)
    return trainer.fit(learner, Episodes(), lambda learner, device, dtype: val(learner), Checkpointer(tmp_path),
                       MetricsWriter(tmp_path, tensorboard=False), default_callbacks(patience))


def test_trainer_optimises_and_keeps_best(tmp_path):
    learner = Quadratic()
    state = fit(tmp_path, learner, max_steps=60, lr=0.1, eval_every=10, weight_decay=0.0)
    assert abs(learner.w.item() - 3) < 0.3
    best = Checkpointer(tmp_path).load(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == state.best_step > 10 and best["score"] == state.best_score
    assert abs(best["model"]["w"].item() - 3) == pytest.approx(-state.best_score)


def test_non_finite_loss_stops_with_the_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(episodes \[2\]\)"):
        fit(tmp_path, Quadratic(nan_at=3), max_steps=10, lr=0.1)


def test_non_finite_loss_in_another_process_stops_this_one_too(tmp_path):
    """Under torchrun a process whose own loss is finite must stop when another's is not; otherwise it
    would wait forever in the next gradient all-reduce."""
    from metarun.distributed import Dist

    class OtherRankFails(Dist):  # one process of a run whose other process's loss is NaN at step 3
        steps = [0]

        def any(self, flag):
            self.steps[0] += 1
            return flag or self.steps[0] >= 3

    trainer = Trainer(device="cpu", progress=False, warmup_steps=0, schedule="constant", max_steps=10, lr=0.1)
    fake = OtherRankFails()
    with pytest.raises(NonFiniteLossError, match=r"non-finite in another process at step 3"):
        trainer.dist = fake
        trainer.fit(Quadratic(), Episodes(), lambda learner, device, dtype: distance_to_optimum(learner),
                    Checkpointer(tmp_path), MetricsWriter(tmp_path, tensorboard=False))


def test_early_stopping(tmp_path):
    learner = Quadratic()
    flat = lambda lr: {"val/x": {"acc": 50.0, "ci95": 0.0, "episodes": 1}}  # noqa: E731
    state = fit(tmp_path, learner, val=flat, max_steps=100, lr=0.1, eval_every=1, patience=2)
    assert state.step == 3 and state.finished


def test_without_callbacks_nothing_keeps_a_best_checkpoint(tmp_path):
    """Best-checkpoint choice is a callback: a loop without it trains to the end and writes only last.pt."""
    learner = Quadratic()
    trainer = Trainer(device="cpu", progress=False, warmup_steps=0, schedule="constant", grad_clip=None, max_steps=6,
                      lr=0.1, eval_every=2, checkpoint_every=2)
    seen = []

    class Record(Callback):
        def on_validation(self, trainer, learner, state, scores, ckpt):
            seen.append((state.step, scores["val/x"]["acc"]))

    state = trainer.fit(learner, Episodes(), lambda learner, device, dtype: distance_to_optimum(learner),
                        Checkpointer(tmp_path), MetricsWriter(tmp_path, tensorboard=False), [Record()])
    assert state.step == 6 and state.best_step == -1 and [s for s, _ in seen] == [2, 4, 6]
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and not (tmp_path / "checkpoints" / "best.pt").exists()
    with pytest.raises(ConfigError, match="callbacks.early_stopping.patience=0 is not valid"):
        EarlyStopping(0)


@pytest.mark.parametrize("kw,match", [({"lr": 0}, "trainer.lr"), ({"precision": "fp8"}, "fp32, bf16"),
                                      ({"max_steps": -1}, "trainer.max_steps"), ({"schedule": "exp"}, "linear")])
def test_bad_trainer_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(device="cpu", **kw)


def test_threads_default_to_the_cpus_this_process_may_use(monkeypatch):
    import os

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert Trainer(device="cpu").threads == len(os.sched_getaffinity(0)) == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the environment's choice is kept
        assert Trainer(device="cpu").threads == 1
        assert Trainer(device="cpu", threads=1).threads == 1 == torch.get_num_threads()
        with pytest.raises(ConfigError, match="trainer.threads=0 is not valid"):
            Trainer(device="cpu", threads=0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 8640 vs 8532"),
])
def test_a_full_disk_during_a_checkpoint_is_named_and_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(ckpt.last, {"model": {"w": torch.zeros(3)}, "step": 1})
    before = ckpt.last.read_bytes()

    def full(state, f):
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"cannot write .*last.pt: the disk holding it is full \(.* MiB free, "
                                              r"about 0.0 MiB needed\). The previous last.pt is kept"):
        ckpt.save(ckpt.last, {"model": {"w": torch.ones(3)}, "step": 2})
    assert ckpt.last.read_bytes() == before and [p.name for p in ckpt.dir.iterdir()] == ["last.pt"]
