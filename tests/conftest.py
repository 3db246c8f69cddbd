"""Shared helpers: compose configs and run them in-process, and run the `metarun` CLI in a subprocess
(kept for what only the CLI does: exit codes, messages, multirun, kills)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from metarun.models.base import Encoder
from metarun.paths import config_dir

SHARED = Path(__file__).resolve().parents[2] / "shared"
FEWREL_VAL = SHARED / "data" / "fewrel" / "val_wiki.json"


@pytest.fixture(autouse=True, scope="session")
def _private_feature_cache(tmp_path_factory):
    """Runs of the suite keep their feature cache (run.yaml's feature_cache) in a folder of this
    session, never the user's ~/.cache/metarun (subprocesses inherit the variable)."""
    os.environ["METARUN_CACHE_DIR"] = str(tmp_path_factory.mktemp("metarun_cache"))
    yield


def compose_cfg(overrides: list[str] | None = None):
    """The config `metarun OVERRIDES` runs with (Hydra initialised on the shipped configs once)."""
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(config_dir()), version_base="1.3")  # stays initialised
    return compose("run", overrides=list(overrides or []))


def run_in_process(args: list[str], run_dir: Path) -> dict:
    """`metarun ARGS hydra.run.dir=RUN_DIR` as `run(cfg)` in this process: the config composed as the
    CLI composes it, without the subprocess (imports and model loading once per test session).
    Returns the results; user errors raise MetarunError (the CLI prints them and exits 2)."""
    from metarun.run import run

    return run(compose_cfg(args), run_dir, overrides=list(args))


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR") if full_env["HYDRA_FULL_ERROR"] == "0" else None
    return subprocess.run([sys.executable, "-m", "metarun", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished `metarun debug=fast` run folder, shared by every test that reads one: tests that
    change it work on a copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_in_process(FAST, run_dir)
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder by its relative path, the lock file included (a refused run does not
    write its pid there)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


FAST = ["debug=fast", "trainer.progress=false", "logger=jsonl"]


class FeatureEncoder(Encoder):
    """A trainable encoder over feature vectors, (B, in_dim) -> (B, out_dim), for learner unit tests."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin, self.out_dim = torch.nn.Linear(in_dim, out_dim), out_dim

    def forward(self, x):
        return torch.tanh(self.lin(x))


@pytest.fixture
def fewrel_file(tmp_path: Path) -> Path:
    """A small FewRel-format file written by the test: 6 relations x 12 instances."""
    import random

    rng = random.Random(0)
    words = "the river bridge city company founded by in located near born player team of a and was".split()
    data = {}
    for r in range(6):
        rel = f"P{100 + r}"
        data[rel] = []
        for _ in range(12):
            tokens = [rng.choice(words) for _ in range(rng.randint(6, 14))]
            h, t = sorted(rng.sample(range(len(tokens)), 2))
            data[rel].append({"tokens": tokens, "h": ["x", "Q1", [[h]]], "t": ["y", "Q2", [[t]]]})
    path = tmp_path / "fewrel" / "val_wiki.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path
