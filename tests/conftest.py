"""Shared helpers: compose configs and run them in-process, and run the `metarun` CLI in a subprocess
(kept for what only the CLI does: exit codes, messages, multirun, kills)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from metarun.config import build
from metarun.data.collate import Episode
from metarun.data.dataset import Example, FewShotDataset
from metarun.learners.metric.protonet import ProtoNet
from metarun.models.base import Encoder
from metarun.models.encoders import TransformerEncoder
from metarun.paths import config_dir

REPO = Path(__file__).resolve().parents[1]  # the repository root
SHARED = REPO.parent / "shared"
FEWREL_VAL = SHARED / "data" / "fewrel" / "val_wiki.json"


@pytest.fixture(autouse=True, scope="session")
def _private_feature_cache(tmp_path_factory):
    """Runs of the suite keep their feature cache (run.yaml's feature_cache) in a folder of this
    session, never the user's ~/.cache/metarun (subprocesses inherit the variable)."""
    os.environ["METARUN_CACHE_DIR"] = str(tmp_path_factory.mktemp("metarun_cache"))
    yield


def pytest_collection_modifyitems(items):
    """Tests under tests/e2e/ run metarun itself (in process or as the CLI) and carry the `e2e` marker:
    `pytest tests/unit` or `-m "not e2e"` gives the component tests alone in about a minute."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)


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
    tests = str(Path(__file__).parent)  # for test-only callbacks (kill_callback.py)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": path, **(env or {})}
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


def csv_file(tmp_path, body: bytes | str, name="rows.csv"):
    """BODY (bytes as given, text as UTF-8) written to TMP_PATH/NAME."""
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def write_csv(path, rows, delimiter=","):
    """(sentence, intent) ROWS written under that header."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["sentence", "intent"])
        w.writerows(rows)
    return path


# 20 rows of five classes a-e, four each, for csv_file
TABLE_ROWS = "".join(f"{t} {c} {i},{c}\n" for c in "abcde" for i in range(4) for t in ("some text of",))

FAST = ["debug=fast", "trainer.progress=false", "logger=jsonl"]


class FeatureEncoder(Encoder):
    """A trainable encoder over feature vectors, (B, in_dim) -> (B, out_dim), for learner unit tests."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin, self.out_dim = torch.nn.Linear(in_dim, out_dim), out_dim

    def forward(self, x):
        return torch.tanh(self.lin(x))


# -- small models and data for component tests ------------------------------------------------------

CPU = torch.device("cpu")
SMALL_DATA = FewShotDataset(tuple(Example(f"sentence {i} about thing {i % 3}", str(i % 3)) for i in range(12)), "test")


def tiny_protonet(seed: int = 0, prior: dict | None = None, **kw) -> ProtoNet:
    """ProtoNet on the tiny random encoder (encoder=tiny), in eval mode, seeded; `prior`: the options
    of a NamePrior refiner to attach (refiner=[name_prior])."""
    from metarun.learners.refiners import NamePrior

    torch.manual_seed(seed)
    net = ProtoNet(build(compose_cfg(["encoder=tiny"]).encoder, "encoder"), **kw)
    return net.attach(refiners=[NamePrior(**prior)] if prior is not None else []).eval()


def attached(learner, *objectives):
    """`learner` with `objectives` bound and attached, as the run attaches `objective=[...]`."""
    for objective in objectives:
        objective.bind(learner)
    return learner.attach(objectives)


WORDS = "the a card my arrived when will money transfer account pin why is not working still".split()


def sentences(n: int, seed: int = 0, pairs: bool = False) -> FewShotDataset:
    """N random sentences of 1-30 WORDS in four classes (with a second text each if PAIRS)."""
    import random

    rng = random.Random(seed)
    make = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))  # noqa: E731
    return FewShotDataset(tuple(Example(make(), str(i % 4), text_pair=make() if pairs else None) for i in range(n)),
                          "generated")


def tiny_tokenize(max_length: int = 16):
    return build(compose_cfg(["encoder=tiny", f"encoder.max_length={max_length}"]).encoder, "encoder").tokenize


def feature_episode(n=3, k=2, q=2, d=4, seed=0, dtype=torch.float32):
    """An N-way K-shot Q-query episode of D-dim features around N random centres."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n, d, generator=g, dtype=dtype)
    xs = centers.repeat_interleave(k, 0) + 0.5 * torch.randn(n * k, d, generator=g, dtype=dtype)
    xq = centers.repeat_interleave(q, 0) + 0.5 * torch.randn(n * q, d, generator=g, dtype=dtype)
    return Episode(xs, torch.arange(n).repeat_interleave(k), xq, torch.arange(n).repeat_interleave(q), n)


def tiny_encoder():
    """A 2-layer, 16-wide random BERT (narrower than encoder=tiny), seeded."""
    torch.manual_seed(0)
    return TransformerEncoder(
        pretrained=False,
        name="tiny",
        config_overrides=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32),
    )


def text_episode(enc, n=3, k=2, q=2, shift=0):
    """A tokenised N-way episode of short banking phrases for ENC (SHIFT gives another task)."""
    words = ["card", "payment", "refund", "transfer", "atm", "pin", "top up", "fee"]
    ex = lambda c, i: Example(
        f"{words[(c + shift) % 8]} {words[(c + i) % 8]} please" + " now" * (shift * i % 3),  # noqa: E731
        str(c),
    )
    s = [ex(c, i) for c in range(n) for i in range(k)]
    qq = [ex(c, i + k) for c in range(n) for i in range(q)]
    return Episode(
        enc.tokenize(s), torch.arange(n).repeat_interleave(k), enc.tokenize(qq), torch.arange(n).repeat_interleave(q), n
    )


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


@pytest.fixture
def clinc_oos_file(tmp_path: Path) -> Path:
    """A tiny file in the layout of CLINC150's data_full.json: 9 intents (i0..i8) with 8 / 3 / 4 train /
    val / test rows each, and 6 / 12 / 20 out-of-scope rows. Intent i's rows start with its own word;
    out-of-scope rows use neither."""
    import random

    rng = random.Random(0)
    filler = "please now today my the a can you tell me about".split()
    words = "card pin weather song flight alarm timer recipe bank".split()

    def rows(n, label, word):
        return [[f"{word} {' '.join(rng.choice(filler) for _ in range(4))} {j}", label] for j in range(n)]

    data = {}
    for part, n in (("train", 8), ("val", 3), ("test", 4)):
        data[part] = [r for i in range(9) for r in rows(n, f"i{i}", words[i])]
    for part, n in (("oos_train", 6), ("oos_val", 12), ("oos_test", 20)):
        data[part] = rows(n, "oos", "zebra")
    path = tmp_path / "data_full.json"
    path.write_text(json.dumps(data))
    return path
