"""A run killed with SIGKILL and started again ends exactly like an uninterrupted run."""

import json

import pytest
import torch

from kill_callback import kill_at as kill_after
from conftest import FAST, read_json, run_cli, run_in_process
from metarun.tracking.folder.checkpoint import Checkpointer

ARGS = [*FAST, "trainer.max_steps=8", "trainer.eval_every=2", "trainer.checkpoint_every=3"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    run_in_process(ARGS, run_dir)
    return run_dir


@pytest.mark.parametrize("kill_at", [4, 6])  # mid-interval (work is redone) and right after a save
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, kill_at, capsys):
    run_dir = tmp_path / "run"
    killed = run_cli([*ARGS, f"hydra.run.dir={run_dir}", *kill_after(kill_at)], cwd=tmp_path)
    assert killed.returncode == -9
    assert not (run_dir / "results.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["step"] == 3 * (kill_at // 3)
    run_in_process(ARGS, run_dir)  # the resumed run; only the kill needs a process of its own
    assert "resuming from" in capsys.readouterr().out
    assert read_json(run_dir / "results.json")["results"] == read_json(uninterrupted / "results.json")["results"]
    assert metrics(run_dir) == metrics(uninterrupted)  # lines after the checkpoint were rewritten, not duplicated
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_kill_before_the_first_checkpoint_leaves_every_line_once(tmp_path, uninterrupted):
    """Killed after the step-0 validation and one step, before any last.pt: the restarted run's
    metrics.jsonl holds each line once (the step-0 line was written twice before)."""
    run_dir = tmp_path / "run"
    killed = run_cli([*ARGS, f"hydra.run.dir={run_dir}", *kill_after(1)], cwd=tmp_path)
    assert killed.returncode == -9 and not (run_dir / "checkpoints" / "last.pt").exists()
    assert [m["step"] for m in metrics(run_dir)] == [0, 1]
    run_in_process(ARGS, run_dir)
    assert metrics(run_dir) == metrics(uninterrupted)


def test_rerunning_a_finished_run_reproduces_its_results(tmp_path, uninterrupted):
    res = run_cli([*ARGS, f"hydra.run.dir={uninterrupted}"], cwd=tmp_path)
    assert res.returncode == 0
    assert read_json(uninterrupted / "results.json")["steps"] == 8


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(ckpt.last, {"step": 1})

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(ckpt.last, {"step": 2})
    monkeypatch.undo()
    assert ckpt.load(ckpt.last)["step"] == 1
    assert [p.name for p in ckpt.dir.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("learner, own", [
    (["learner=lstm_meta", "learner.tensor_embedding=2", "learner.inner_steps=2"], "policy."),  # a learned optimiser
    (["learner=hypernet", "learner.generate=adapters", "learner.inner_steps=1"], "generator."),  # + learned rates
    # a frozen encoder: trained on cached features; the persistent memory bank is a buffer in the checkpoint
    (["learner=mann", "learner.memory=persistent", "encoder.freeze=true"], "bank"),
    (["learner=maml", "learner.adapt=lora", "learner.top_k=1"], "lora.down."),  # meta-learned down-projections
    (["objective=[mlm]"], "objectives.0.head."),  # masked-LM steps: their masks come from the restored RNG
    (["objective=[consistency]"], "encoder."),  # augmented views: drawn from the restored RNG
    # domain-adversarial: the target sentences are drawn from the restored RNG; the discriminator is saved
    (["objective=[adversarial]", "unlabelled=data", "+data@unlabelled.data=hwu64"], "objectives.0.discriminator."),
])
def test_meta_learned_learners_resume_exactly_after_sigkill(tmp_path, learner, own):
    """The meta-learner's own parameters (LSTM, generator, inner rates, memory, low-rank down-projections,
    the masked-LM head) are in the checkpoint."""
    args = [*ARGS, *learner]
    full, run_dir = tmp_path / "full", tmp_path / "run"
    run_in_process(args, full)
    killed = run_cli([*args, f"hydra.run.dir={run_dir}", *kill_after(4)], cwd=tmp_path)
    assert killed.returncode == -9
    run_in_process(args, run_dir)
    assert read_json(run_dir / "results.json")["results"] == read_json(full / "results.json")["results"]
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(k.startswith(own) for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "sig, code, words, learner",
    [
        ("SIGINT", 130, "interrupted", ["learner=lstm_meta", "learner.tensor_embedding=2", "learner.inner_steps=2"]),
        (
            "SIGTERM",
            143,
            "terminated (SIGTERM)",
            ["learner=hypernet", "learner.generate=adapters", "learner.inner_steps=1"],
        ),
    ],
)
def test_ctrl_c_or_sigterm_then_an_exact_resume(
    tmp_path, sig, code, words, learner
):
    """Ctrl c or sigterm mid training exits with a message and the resume is exact."""
    import signal
    import subprocess
    import sys
    import time

    args = [*FAST, *learner, "trainer.max_steps=100", "trainer.eval_every=100", "trainer.checkpoint_every=2"]
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metarun", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))  # mid-training: 100 steps take far longer than the first checkpoint
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"metarun: {words}; the last checkpoint is {last}" in err and "Traceback" not in err
    assert not (run_dir / "results.json").exists() and torch.load(last, weights_only=True)["state"]["step"] < 100
    resumed = run_in_process(args, run_dir)
    assert resumed["results"] == run_in_process(args, tmp_path / "full")["results"]


def test_ctrl_c_waits_for_a_checkpoint_write(tmp_path):
    """A SIGINT inside torch.save's zip writer would surface as the writer's RuntimeError (exit 1, a
    traceback); it is held until the file is in place, then raised as KeyboardInterrupt."""
    import os
    import signal

    ckpt = Checkpointer(tmp_path, {"seed": 0})
    state = {"step": 3, "weights": torch.arange(10_000.0)}
    real_save = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives mid-write
        real_save(obj, f)

    torch.save = interrupted_save
    try:
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(ckpt.last, state)
    finally:
        torch.save = real_save
    saved = ckpt.load(ckpt.last)
    assert saved["step"] == 3 and torch.equal(saved["weights"], state["weights"])
    assert not list(ckpt.dir.glob(".*.tmp"))
