"""The `metarun` command end to end on a tiny encoder: files, folders, help, printed config, checkpoints."""

import json

import pytest

from conftest import FAST, read_json, run_cli, run_in_process
from metarun.errors import CheckpointError, RunDirError


def test_end_to_end_run_writes_every_file(tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli(["debug=fast", "trainer.progress=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for f in [".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "checkpoints/last.pt",
              "checkpoints/best.pt", "run_info.json", "results.json"]:
        assert (run_dir / f).is_file(), f
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    results = read_json(run_dir / "results.json")
    assert {k: results[k] for k in ("learner", "data", "encoder", "seed")} == {
        "learner": "protonet", "data": "banking77", "encoder": "tiny", "seed": 0}
    assert set(results["results"]) == {"test/5way_1shot", "test/5way_5shot", "val/5way_5shot"}
    for v in results["results"].values():
        assert set(v) >= {"acc", "ci95", "episodes"} and 0 <= v["acc"] <= 100 and v["ci95"] >= 0
    assert results["results"]["test/5way_1shot"]["episodes"] == 20
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 7))
    assert any("val/5way_5shot/acc" in r for r in rows) and any("test/5way_1shot/acc" in r for r in rows)
    info = read_json(run_dir / "run_info.json")
    assert {"git", "command", "host", "device", "versions"} <= set(info)
    assert set(info["git"]) == {"commit", "dirty"} and info["versions"]["torch"]
    assert "test/5way_5shot" in res.stdout + res.stderr  # the summary is printed


def test_runs_started_together_get_their_own_folders(tmp_path):
    """The default run folder holds the start time to the microsecond and the process id."""
    import os
    import subprocess
    import sys

    args = [
        sys.executable,
        "-m",
        "metarun",
        *FAST,
        "trainer.max_steps=0",
        "eval.test.episodes=2",
        "eval.test.shots=[1]",
    ]
    procs = [
        subprocess.Popen(
            args,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    folders = sorted(d.name for d in (tmp_path / "outputs").glob("*/*") if (d / "results.json").is_file())
    assert len(folders) == 2
    assert sorted(int(f.split("_")[1]) for f in folders) == sorted(p.pid for p in procs)
    assert all(f.endswith("_protonet_banking77") for f in folders)


def test_help_lists_every_config_group_and_its_options(tmp_path):
    from metarun.paths import config_dir

    res = run_cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    groups = {
        d.name: sorted(f.stem for f in d.glob("*.yaml"))
        for d in config_dir().iterdir()
        if d.is_dir() and any(d.glob("*.yaml"))
    }  # hydra/ holds only Hydra's own groups
    assert {"data", "learner", "encoder", "eval", "sampler", "trainer"} <= set(groups)
    for group, options in groups.items():
        assert f"{group}: {', '.join(options)}" in res.stdout, res.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    res = run_cli(["--cfg", "job", "sampler.k_shot=1"], cwd=tmp_path)
    assert res.returncode == 0
    assert "k_shot: 1" in res.stdout and "_target_: metarun.learners.metric.protonet.ProtoNet" in res.stdout


# Bad input, case by case: tests/test_bad_inputs.py (in-process, and through this CLI for exit codes).


def test_corrupt_checkpoint_is_kept_and_explained(tmp_path):
    run_dir = tmp_path / "run"
    run_in_process(FAST, run_dir)
    for name in ("DONE", "results.json"):  # as if killed before it finished
        (run_dir / name).unlink()
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match="last.pt cannot be read.*kept"):
        run_in_process(FAST, run_dir)
    assert last.read_bytes() == b"PK\x03\x04 this is not a checkpoint"
    assert not (run_dir / "results.json").exists()


def test_a_checkpoint_without_a_saved_config_is_never_touched(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"someone's checkpoint")
    with pytest.raises(RunDirError, match="no .hydra/config.yaml"):
        run_in_process(FAST, run_dir)
    assert last.read_bytes() == b"someone's checkpoint"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints"]


def test_incompatible_checkpoint_names_the_difference(tmp_path):
    run_dir = tmp_path / "run"
    run_in_process([*FAST, "trainer.max_steps=2"], run_dir)
    with pytest.raises(RunDirError, match=r"another config \(sampler.k_shot: 5 there, 1 now\)"):
        run_in_process([*FAST, "trainer.max_steps=2", "sampler.k_shot=1"], run_dir)


def test_the_checkpointer_refuses_a_checkpoint_of_another_config(tmp_path):
    from metarun.tracking.folder.checkpoint import Checkpointer

    Checkpointer(tmp_path, {"seed": 0, "sampler": {"k_shot": 5}}).save(
        tmp_path / "checkpoints" / "last.pt", {"step": 3}
    )
    with pytest.raises(CheckpointError, match="different config.*sampler"):
        Checkpointer(tmp_path, {"seed": 0, "sampler": {"k_shot": 1}}).resume_state()
    assert Checkpointer(tmp_path, {"seed": 0, "sampler": {"k_shot": 5}}).resume_state()["step"] == 3
