"""Sweeps: finished jobs are skipped on relaunch, a failing job never takes the others down, and
unexpected errors are retried from the job's last checkpoint."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from conftest import FAST, read_json, run_cli, run_in_process
from metarun.paths import config_dir


def test_a_relaunched_sweep_skips_finished_jobs(tmp_path):
    """Relaunched sweep skips finished jobs and a failing job does not stop it."""
    args = ["-m", *FAST, "sampler.k_shot=1,500", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]  # the sweep finished, with a failed job
    ok, bad = sorted((tmp_path / "sweep").glob("[0-9]_*"))
    assert (ok / "DONE").exists() and read_json(ok / "results.json")["steps"] == 6
    table = (tmp_path / "sweep" / "table.md").read_text()  # the end-of-sweep callback: rows by what the sweep varies
    assert table.startswith("| regime | learner / sampler.k_shot | banking77 / 5way_1shot |")
    assert "| no names, inductive | protonet / 1 |" in table
    for png in (tmp_path / "sweep" / "accuracy_vs_k.png", ok / "curves.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not (bad / "DONE").exists() and "K+Q = 500+5" in (bad / "FAILED").read_text()
    stamp = (ok / "results.json").stat().st_mtime_ns
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 3 and "finished there (DONE)" in res.stdout + res.stderr
    assert (ok / "results.json").stat().st_mtime_ns == stamp  # not run again
    assert (bad / "FAILED").exists()


def multirun_cfg(tmp_path, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("run", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("retries,expected", [(0, None), (1, 50.0)])
def test_unexpected_errors_are_retried(tmp_path, monkeypatch, retries, expected):
    import metarun.cli as cli
    import metarun.run as run_module

    calls = []

    def flaky(cfg):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"results": {"val/5way_5shot": {"acc": 50.0}}}

    monkeypatch.setattr(run_module, "run", flaky)
    cfg = multirun_cfg(tmp_path, [f"retries={retries}"])
    with open_dict(cfg):
        del cfg["hydra"]
    assert cli._main.__wrapped__(cfg) == expected
    assert len(calls) == retries + 1 and "illegal memory access" in (tmp_path / "FAILED").read_text()


def test_parallel_and_slurm_launchers_agree(tmp_path):
    """Parallel and slurm launchers give the basic launchers results."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # the basic launcher runs each job as run(cfg) in its process: the same as run(cfg) here
    results = {"basic": [run_in_process([*FAST, f"seed={s}"], tmp_path / f"basic_{s}")["results"] for s in (0, 1)]}
    for name in ("parallel", "slurm_local"):  # slurm_local: the Slurm path on submitit's local executor
        sweep = tmp_path / name
        res = run_cli(["-m", f"hydra/launcher={name}", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        results[name] = [read_json(f)["results"] for f in sorted(sweep.glob("*/results.json"))]
    assert results["parallel"] == results["basic"] == results["slurm_local"]


def test_optuna_preset_maximises_validation_accuracy(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    sweep = tmp_path / "tune"
    res = run_cli(["-m", "hydra/sweeper=tune", "hydra.sweeper.n_trials=2", *FAST,
                   "trainer.lr=tag(log, interval(1e-5, 1e-2))", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    vals = [read_json(f)["results"]["val/5way_5shot"]["acc"] for f in sweep.glob("*/results.json")]
    assert len(vals) == 2 and best["best_value"] == max(vals) and "trainer.lr" in best["best_params"]
