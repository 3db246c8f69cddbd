"""A run folder as a unit of work: continued runs, strict JSON, file modes, sweep folders and exit
codes, crashes during a checkpoint write, metrics after restarts, and the CLI's messages for
interrupts and unwritable folders."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import torch

from kill_callback import kill_at as kill_after
from conftest import FAST, read_json, run_cli, run_in_process

ARGS = [*FAST, "trainer.max_steps=6", "trainer.eval_every=2", "trainer.checkpoint_every=3"]


def steps_logged(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in json.loads(line)]


def test_a_larger_max_steps_continues_a_finished_run(tmp_path, capsys):
    """A larger max steps continues a finished run and keeps its results."""
    run_dir = tmp_path / "run"
    first = run_in_process(ARGS, run_dir)
    again = run_in_process([*ARGS, "skip_done=false"], run_dir)  # same config: tested again, same numbers
    assert again["results"] == first["results"] and again["steps"] == 6
    longer = run_in_process([*ARGS, "trainer.max_steps=12"], run_dir)
    assert longer["steps"] == 12 and "resuming from" in capsys.readouterr().out
    assert read_json(run_dir / "results.steps6.json")["results"] == first["results"]  # the 6-step results kept
    assert read_json(run_dir / "results.json")["steps"] == 12 and (run_dir / "DONE").is_file()
    assert steps_logged(run_dir) == list(range(1, 13))
    assert "max_steps: 12" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_one_test_episode_has_no_interval(tmp_path):
    """One test episode has no interval and results stay strict json."""
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="no confidence interval"):
        run_in_process([*FAST, "eval.test.episodes=1"], run_dir)
    text = (run_dir / "results.json").read_text()
    scores = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))["results"]
    assert scores["test/5way_1shot"]["ci95"] is None and scores["test/5way_1shot"]["episodes"] == 1
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    run_dir = tmp_path / "run"
    old = os.umask(0o022)
    try:
        run_in_process(FAST, run_dir)
    finally:
        os.umask(old)
    for name in ("results.json", "run_info.json", "DONE", ".hydra/config.yaml", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name


def test_sweep_jobs_stay_inside_and_failures_exit_3(tmp_path):
    """Sweep job folders stay inside the sweep and failed jobs exit 3."""
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", *FAST, "data=table", "data.path=../../../x.tsv,/abs/dir/y.tsv", f"hydra.sweep.dir={sweep}"],
                  cwd=tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and all((j / "FAILED").is_file() for j in jobs)
    assert [j.name.split("data.path=")[1].split("-")[0] for j in jobs] == ["x.tsv", "y.tsv"]
    assert not (tmp_path.parent / "x.tsv").exists() and not any(
        p.name.startswith("abs") for p in tmp_path.rglob("abs*")
    )
    summary = res.stdout + res.stderr
    assert "2 job(s) failed" in summary and all(j.name in summary for j in jobs)


def test_a_kill_mid_checkpoint_keeps_the_previous_one(tmp_path):
    """A kill during a checkpoint write keeps the previous checkpoint."""
    full = run_in_process(ARGS, tmp_path / "full")
    run_dir = tmp_path / "run"
    killed = run_cli(
        [*ARGS, f"hydra.run.dir={run_dir}", *kill_after(6, during_save=True)],
        cwd=tmp_path,
    )
    assert killed.returncode == -9
    orphans = list((run_dir / "checkpoints").glob(".last.pt.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0  # the write that was cut short
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["step"] == 3
    resumed = run_in_process(ARGS, run_dir)
    assert resumed["results"] == full["results"]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # the orphan was removed at start-up
    assert steps_logged(run_dir) == list(range(1, 7))


def test_a_restart_logs_each_step_once(tmp_path):
    """A restart without a checkpoint and a cut metrics line log each step once."""
    run_dir = tmp_path / "run"
    killed = run_cli([*ARGS, f"hydra.run.dir={run_dir}", *kill_after(2)], cwd=tmp_path)
    assert killed.returncode == -9 and not (run_dir / "checkpoints" / "last.pt").exists()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo')  # a line cut short by the kill
    run_in_process(ARGS, run_dir)
    assert steps_logged(run_dir) == list(range(1, 7))
    assert read_json(run_dir / "results.json")["steps"] == 6 and (run_dir / "curves.png").is_file()


@pytest.fixture
def cli_job(tmp_path, monkeypatch):
    """The CLI's task function on a composed config, with `run` replaced by `fake`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    import metarun.cli as cli
    import metarun.run as run_module
    from conftest import compose_cfg

    def call(fake, mode=RunMode.RUN):
        from hydra import compose

        cfg = compose("run", overrides=FAST, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        monkeypatch.setattr(run_module, "run", fake)
        with open_dict(cfg):
            del cfg["hydra"]
        return cli._main.__wrapped__(cfg)

    compose_cfg()  # Hydra initialised on the shipped configs
    yield call
    HydraConfig.instance().cfg = None


def test_ctrl_c_names_the_last_checkpoint_and_exits_130(cli_job, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")

    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        cli_job(interrupted)
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(tmp_path / "checkpoints" / "last.pt") in err and "resume" in err


@pytest.mark.parametrize(
    "code,words",
    [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "permission was denied")],
)
def test_a_full_or_unwritable_folder_is_one_message(cli_job, capsys, code, words):
    """A full disk or unwritable folder is one message naming the path."""
    def failing(cfg):
        raise OSError(code, os.strerror(code), "/data/runs/x/results.json")

    with pytest.raises(SystemExit) as e:
        cli_job(failing)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "/data/runs/x/results.json" in err and words in err and "Traceback" not in err


def test_a_finished_run_keeps_no_optimizer_state_unless_asked(tmp_path):
    light, full = tmp_path / "light", tmp_path / "full"
    a = run_in_process(ARGS, light)
    b = run_in_process([*ARGS, "trainer.keep_optimizer=true"], full)
    assert a["results"] == b["results"]
    saved = torch.load(light / "checkpoints" / "last.pt", weights_only=True)
    assert saved["optimizer"] is None and saved["scheduler"] is not None and saved["state"]["step"] == 6
    assert torch.load(full / "checkpoints" / "last.pt", weights_only=True)["optimizer"] is not None
    size = lambda d: (d / "checkpoints" / "last.pt").stat().st_size  # noqa: E731
    assert size(light) < 0.6 * size(full)  # AdamW keeps two moments per weight


def test_step_0_is_validated_but_never_a_candidate(tmp_path):
    """The untrained model is validated at step 0 without becoming a candidate."""
    run_dir = tmp_path / "run"
    out = run_in_process(ARGS, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "val/5way_5shot/acc" in rows[0] and "train/loss" not in rows[0]
    assert out["best_step"] > 0  # step 0 is the curve's start, never the tested checkpoint
    quiet = run_in_process([*ARGS, "trainer.validate_at_start=false"], tmp_path / "quiet")
    assert quiet["results"] == out["results"]  # validating first changes nothing that training does


def test_frozen_weights_are_rebuilt_not_saved(tmp_path):
    """Frozen weights are not saved and come back from where the run builds them."""
    run_dir = tmp_path / "run"
    out = run_in_process([*ARGS, "encoder.freeze=true", "learner=matching"], run_dir)  # only the scale trains
    for name in ("best.pt", "last.pt"):
        saved = torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]
        assert not any(k.startswith("encoder.") and "embeddings.position_ids" not in k for k in saved), name
        assert any("scale" in k for k in saved)
    again = run_in_process([*ARGS, "encoder.freeze=true", "learner=matching", "skip_done=false"], run_dir)
    assert again["results"] == out["results"]  # resumed from a checkpoint without the encoder


def test_a_resume_after_test_logs_each_line_once(tmp_path):
    """A run killed after logging its test scores logs each line once after the resume."""
    run_dir = tmp_path / "run"
    first = run_in_process(FAST, run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert sum('"test/' in line for line in lines) == 1
    for f in ("results.json", "DONE"):  # killed after the test line, before the results were written
        (run_dir / f).unlink()
    again = run_in_process(FAST, run_dir)
    assert again["results"] == first["results"]
    assert (run_dir / "metrics.jsonl").read_text().splitlines() == lines  # every line exactly once


def test_a_refused_rerun_changes_no_byte(tmp_path):
    """A refused rerun changes no byte of the folder not even the lock."""
    from conftest import snapshot
    from metarun.errors import RunDirError

    run_dir = tmp_path / "run"
    run_in_process(FAST, run_dir)
    before, mtime = snapshot(run_dir), (run_dir / ".lock").stat().st_mtime_ns
    with pytest.raises(RunDirError):
        run_in_process([*FAST, "trainer.lr=0.01"], run_dir)
    assert snapshot(run_dir) == before and (run_dir / ".lock").stat().st_mtime_ns == mtime


def test_sweep_folder_names_depend_on_each_value_only():
    from metarun.resolvers import safe_dirname

    path = "/a/long/path/to/the/shared/data/folder/of/this/lab/liu_splits.json"
    names = [
        safe_dirname(
            f"data.split_file={path},learner={learner},sampler.k_shot={k},trainer.max_steps=100,"
            f"trainer.lr=0.0001,seed={k}"
        )
        for learner in ("protonet", "relation")
        for k in (1, 5)
    ]
    parts = {n.split(",")[0] for n in names}
    assert len(parts) == 1 and parts.pop().startswith("data.split_file=liu_splits")  # one value, one name
    assert len(set(names)) == 4 and all(len(n) <= 120 and "/" not in n for n in names)


def test_options_added_later_match_older_saved_configs():
    """Options added later at their old behaviour match saved configs without them."""
    from metarun.tracking.folder.run_dir import config_diff

    saved = {"data": {"name": "banking77", "split": 1}, "seed": 0}
    now = {
        "data": {"name": "banking77", "split": 1, "dedupe": False, "encoding": "utf-8", "quoting": "minimal"},
        "seed": 0,
    }
    assert config_diff(saved, now) == {}  # older run folders still resume and are still skipped
    assert config_diff(saved, {**now, "data": {**now["data"], "dedupe": True}}) == {"data.dedupe": (False, True)}


def test_a_checkpoint_older_than_an_option_resumes(tmp_path):
    """A checkpoint from before an option existed still resumes."""
    import yaml

    run_dir = tmp_path / "run"
    args = [*FAST, "trainer.max_steps=8", "trainer.checkpoint_every=3", "trainer.eval_every=2"]
    full = run_in_process(args, tmp_path / "full")
    killed = run_cli([*args, f"hydra.run.dir={run_dir}", *kill_after(4)], cwd=tmp_path)
    assert killed.returncode == -9
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["data"]["dedupe"]  # written by a version without data.dedupe
    torch.save(state, last)
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    del saved["data"]["dedupe"]
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_in_process(args, run_dir)["results"] == full["results"]


def test_configs_saved_before_the_learner_move_still_match(tmp_path):
    """A run saved before the learners moved into families is still the same config."""
    import shutil

    import yaml

    from metarun.eval_cli import evaluate_run

    run_dir, old = tmp_path / "run", tmp_path / "old"
    first = run_in_process(FAST, run_dir)
    shutil.copytree(run_dir, old)
    saved = yaml.safe_load((old / ".hydra" / "config.yaml").read_text())
    assert saved["learner"]["_target_"] == "metarun.learners.metric.protonet.ProtoNet"
    saved["learner"]["_target_"] = "metarun.learners.protonet.ProtoNet"  # as a run made before the move saved it
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_in_process(FAST, old)["results"] == first["results"]  # the same config: tested again, not refused
    again = evaluate_run(old, [], tmp_path / "eval")
    assert again["results"] == {k: v for k, v in first["results"].items() if k.startswith("test/")}
