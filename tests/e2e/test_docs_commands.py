"""Every command the README and docs/ show: extracted from their indented code blocks and run.

The README's commands run in the default suite, shrunk (`debug=fast`: the tiny encoder, 2 training
steps, a few episodes; a command's own `trainer.max_steps=0` is kept); docs/'s commands are composed
in the default suite and run with `pytest -m docs` (about N minutes: see docs/benchmarks.md). A
placeholder (RUN_DIR, outputs/<date>/<run folder>, YOUR_TARGET_TEXT.txt, my_intents.csv ...) is
replaced by a file or folder the test makes; a command needing a data file the machine lacks
(FewRel's train_wiki.json, CLINC150's data_full.json) is skipped with its reason. A sweep (`-m`)
runs its first job; `metarun --help` and `--cfg job` run as the CLI; reproduce.sh's names are checked
against the script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import FAST, REPO, SHARED, compose_cfg, run_cli, run_in_process

TOOLS = ("metarun", "metarun-eval", "metarun-table", "metarun-compare", "metarun-report", "scripts/reproduce.sh")


def shown_commands() -> list[tuple[str, str]]:
    """(file:line, command text) of every command in an indented code block of README.md and docs/*.md."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = doc.read_text().splitlines()
        n = 0
        while n < len(lines):
            line, start = lines[n], n + 1
            while line.rstrip().endswith("\\") and n + 1 < len(lines):  # a continued command
                n += 1
                line = line.rstrip()[:-1] + " " + lines[n].strip()
            n += 1
            text = line.strip()
            if line.startswith("    ") and text.split(" ", 1)[0] in TOOLS:
                text = text.split(" && ")[-1]  # `pip install ... && metarun`
                found.append((f"{doc.relative_to(REPO)}:{start}", text))
    return found


COMMANDS = shown_commands()
README = [c for c in COMMANDS if c[0].startswith("README")]
DOCS = [c for c in COMMANDS if not c[0].startswith("README")]
CLINC_FULL = SHARED / "data" / "clinc150" / "data_full.json"


@pytest.fixture(scope="module")
def places(tmp_path_factory, finished_run) -> dict[str, str]:
    """Placeholder -> what stands in for it."""
    d = tmp_path_factory.mktemp("docs")
    sweep = d / "sweep"
    shutil.copytree(finished_run, sweep / "0_job")
    (d / "target.txt").write_text("".join(f"an unlabelled sentence number {i} of the target\n" for i in range(50)))
    classes = "abcdefghijklmnop"  # the docs' examples name 16 classes, 6 / 5 / 5
    rows = [(f"utterance {i} about {c}", c) for c in classes for i in range(12)]
    (d / "my_intents.csv").write_text("sentence,intent\n" + "".join(f"{t},{c}\n" for t, c in rows))
    oos = [(f"something else entirely {i}", "oos") for i in range(20)]
    (d / "intents.csv").write_text("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows + oos))
    (d / "splits.json").write_text(json.dumps({"splits": {"1": {"train": list("abcdef"), "val": list("ghijk"),
                                                                 "test": list("lmnop")}}}))
    return {"outputs/<date>/<run folder>": str(finished_run), "RUN_DIR": str(finished_run),
            "outputs/.../run_a": str(finished_run), "outputs/.../run_b": str(finished_run),
            "SWEEP_A": str(sweep), "SWEEP_B": str(sweep), "outputs/multirun/<date>/<time>": str(sweep),
            "outputs/multirun/my_sweep": str(sweep), "YOUR_TARGET_TEXT.txt": str(d / "target.txt"),
            "data_full.json": str(CLINC_FULL), "my_intents.csv": str(d / "my_intents.csv"),
            "intents.csv": str(d / "intents.csv"), "splits.json": str(d / "splits.json")}


def fill(text: str, places: dict[str, str]) -> list[str]:
    """The command's argv with its placeholders replaced."""
    for key in sorted(places, key=len, reverse=True):  # the longest placeholder first
        text = re.sub(rf"(?<![\w/.-]){re.escape(key)}(?![\w])", places[key], text)
    return shlex.split(text, comments=True)


def needs(argv: list[str]) -> str | None:
    """Why the command cannot run on this machine (a data file it lacks), or None."""
    text = " ".join(argv)
    if "data=fewrel " in text + " " and not (SHARED / "data" / "fewrel" / "train_wiki.json").is_file():
        return "FewRel's train_wiki.json is not on this machine (scripts/download_fewrel.sh)"
    if ("fewrel" in text) and not (SHARED / "data" / "fewrel" / "val_wiki.json").is_file():
        return "FewRel's val_wiki.json is not on this machine"
    if (str(CLINC_FULL) in text or "clinc_oos" in text) and not CLINC_FULL.is_file():
        return "CLINC150's data_full.json is not on this machine"
    return None


def first_job(overrides: list[str]) -> list[str]:
    """A sweep's first job: each swept value list at its first value; a sweeper's search spaces left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = []
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if not o.is_sweep_override():
            job.append(text)
        elif o.is_choice_sweep():
            first = next(iter(o.sweep_string_iterator()))
            job.append(f"{'+' if o.is_add() else ''}{o.get_key_element()}={first}")
    return job


def shrunk(overrides: list[str], trains: bool) -> list[str]:
    """The command's overrides made seconds long: the tiny encoder (the CNN kept), 2 steps (none where
    the command does not train: `trainer.max_steps=0`, given or set by its preset)."""
    keep_cnn = [o for o in overrides if o == "encoder=cnn"]
    args = [o for o in overrides if not o.startswith(("encoder=", "trainer=gpu", "hydra/", "hydra."))]
    steps = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2"] if trains else [
        "trainer.max_steps=0"]  # debug=fast would set 6
    return [*args, *FAST, *keep_cnn, *steps]


def run_shown(where: str, text: str, places: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    argv = fill(text, places)
    if (why := needs(argv)) is not None:
        pytest.skip(f"{where}: {why}")
    monkeypatch.setenv("METARUN_DATA_DIR", str(SHARED / "data"))
    tool, args = argv[0], argv[1:]
    if tool == "scripts/reproduce.sh":
        names = re.search(r'^names="([^"]+)"', (REPO / tool).read_text(), re.M).group(1).split()
        assert args[0] in names, f"{where}: reproduce.sh has no preset {args[0]} (it has {names})"
        assert (REPO / "scripts" / "published" / f"{args[0]}.yaml").is_file()
        compose_cfg([f"experiment={args[0]}", *args[1:]])
        return
    if tool == "metarun":
        if args[:1] in (["--help"], ["--cfg"]):
            res = run_cli(args, cwd=tmp_path)
            assert res.returncode == 0 and "Traceback" not in res.stderr, f"{where}: {res.stderr[-1500:]}"
            return
        overrides = first_job(args[1:]) if args[:1] == ["-m"] else args
        cfg = compose_cfg(overrides)  # the shown command composes as written
        if os.environ.get("METARUN_DOCS_COMPOSE_ONLY"):
            return
        results = run_in_process(shrunk(overrides, cfg.trainer.max_steps > 0), tmp_path / "run")
        assert any(k.startswith("test/") for k in results["results"]), f"{where}: no test results"
        return
    from metarun.eval_cli import main as eval_main
    from metarun.tracking.tables.compare import main as compare_main
    from metarun.tracking.tables.report import main as report_main
    from metarun.tracking.tables.table import main as table_main

    args = [a if not a.startswith(("outputs/eval", "compare/")) else str(tmp_path / "out") for a in args]
    if tool == "metarun-eval":
        args = [args[0], "eval.test.episodes=3", *(a for a in args[1:] if not a.startswith("eval.test.episodes="))]
        args += [] if "--out" in args else ["--out", str(tmp_path / "eval")]
    main = {"metarun-eval": eval_main, "metarun-table": table_main, "metarun-compare": compare_main,
            "metarun-report": report_main}[tool]
    extra = ["--out", str(tmp_path / "out")] if tool == "metarun-table" and "--out" not in args else []
    assert main([*args, *extra]) == 0, f"{where}: {tool} {' '.join(args)} failed"


@pytest.mark.parametrize("where,text", README, ids=[w for w, _ in README])
def test_readme_commands_run(where, text, places, tmp_path, monkeypatch):
    run_shown(where, text, places, tmp_path, monkeypatch)


@pytest.mark.parametrize("where,text", DOCS, ids=[w for w, _ in DOCS])
def test_docs_commands_compose(where, text, places, tmp_path, monkeypatch):
    monkeypatch.setenv("METARUN_DOCS_COMPOSE_ONLY", "1")
    run_shown(where, text, places, tmp_path, monkeypatch)


@pytest.mark.docs
@pytest.mark.parametrize("where,text", DOCS, ids=[w for w, _ in DOCS])
def test_docs_commands_run(where, text, places, tmp_path, monkeypatch):
    run_shown(where, text, places, tmp_path, monkeypatch)


def test_every_shown_command_is_found():
    assert len(README) >= 15 and len(DOCS) >= 35  # the extraction itself works
    assert any(text.startswith("metarun-eval outputs/<date>/<run folder> ") for _, text in README)
    assert any("data.label_column=intent" in text for _, text in DOCS)  # a command continued over two lines
