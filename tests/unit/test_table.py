"""metarun-table: grouping by config keys, aggregation over runs, Markdown / CSV / LaTeX."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from conftest import REPO
from metarun.tracking.tables.results import aggregate
from metarun.tracking.tables.table import main


def fake_run(root, name, learner, k_shot, seed, acc, ci=1.0):
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"sampler:\n  k_shot: {k_shot}\nseed: {seed}\n")
    results = {f"test/5way_{k_shot}shot": {"acc": acc, "ci95": ci, "episodes": 600},
               "val/5way_5shot": {"acc": 99.0, "ci95": 0.1, "episodes": 200}}
    (folder / "results.json").write_text(json.dumps({"learner": learner, "data": "banking77", "seed": seed,
                                                     "results": results}))


def test_aggregates_seeds_within_a_cell():
    assert aggregate([{"acc": 80.0, "ci95": 1.0}], "ci") == (80.0, 1.0, 1)
    mean, spread, n = aggregate([{"acc": 80.0, "ci95": 1.96}, {"acc": 84.0, "ci95": 1.96}], "ci")
    assert (mean, n) == (82.0, 2) and spread == pytest.approx(1.96 * math.sqrt(2) / 2)  # pooled standard errors
    assert aggregate([{"acc": 80.0, "ci95": 1.0}, {"acc": 84.0, "ci95": 1.0}], "std")[1] == pytest.approx(math.sqrt(8))


def test_table_groups_by_config_keys_and_writes_three_formats(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i, (learner, k, seed, acc) in enumerate([("protonet", 1, 0, 80.0), ("protonet", 1, 1, 82.0),
                                                 ("protonet", 5, 0, 95.0), ("maml", 1, 0, 70.0)]):
        fake_run(sweep, f"{i}_job", learner, k, seed, acc)
    assert main([str(sweep), "--rows", "learner", "--cols", "sampler.k_shot", "--agg", "std", "--out", str(sweep)]) == 0
    md = (sweep / "table.md").read_text()
    assert md.splitlines()[0] == "| regime | learner | 1 | 5 |"
    assert "| no names, inductive | protonet | 81.00 ± 1.41 (n=2) | 95.00 ± 1.00 (CI) |" in md
    assert "| no names, inductive | maml | 70.00 ± 1.00 (CI) |  |" in md
    assert "standard deviation over a cell's n runs" in md  # which spread is which
    rows = list(csv.reader(io.StringIO((sweep / "table.csv").read_text())))
    assert rows[0] == ["regime", "learner", "1 mean", "1 spread", "5 mean", "5 spread", "runs"]
    assert rows[2][2] == "81.00"
    tex = (sweep / "table.tex").read_text()
    assert r"81.00 $\pm$ 1.41 (n=2)" in tex and tex.startswith(r"\begin{tabular}{llcc}")
    assert "81.00" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2 and "no results.json" in capsys.readouterr().err


def test_published_numbers_print_beside_ours(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i, (k, seed, acc) in enumerate([(1, 0, 80.0), (1, 1, 82.0), (5, 0, 95.0)]):
        fake_run(sweep, f"{i}_job", "protonet", k, seed, acc)
    published = tmp_path / "published.yaml"
    published.write_text(
        "source: Some et al. 2021\nrows: [learner]\ncols: [setting]\nagg: std\nregime: no names, inductive\n"
        "row_names: {protonet: ProtoNet, paper-only: Their method}\n"
        "values:\n  protonet: {5way_1shot: 83.5, 5way_5shot: 96.0}\n"
        "  paper-only: {5way_0shot: 60.0, 5way_5shot: 97.1}\n"
    )
    assert main([str(sweep), "--published", str(published), "--out", str(sweep)]) == 0
    md = (sweep / "table_vs_published.md").read_text()
    lines = md.splitlines()
    assert lines[0] == ("| regime | learner | 5way_0shot ours | 5way_0shot published | 5way_1shot ours | "
                        "5way_1shot published | 5way_5shot ours | 5way_5shot published |")  # shots in order
    # agg std: from the file
    assert lines[2] == ("| no names, inductive | ProtoNet |  |  | 81.00 ± 1.41 (n=2) | 83.50 | 95.00 ± 1.00 (CI) | "
                        "96.00 |")
    assert lines[3] == "| no names, inductive | Their method |  | 60.00 |  |  |  | 97.10 |"
    assert "Published: Some et al. 2021" in md
    assert md in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text("rows: [learner]\n")
    assert main([str(sweep), "--published", str(tmp_path / "bad.yaml")]) == 2
    assert "needs a `values` mapping" in capsys.readouterr().err


def test_every_reproduce_preset_has_published_numbers():
    """Every reproduce preset has published numbers and a usage error."""
    import subprocess

    from metarun.paths import config_dir
    from metarun.tracking.tables.table import load_published

    root = REPO
    script = root / "scripts" / "reproduce.sh"
    names = script.read_text().split('names="')[1].split('"')[0].split()
    assert names == ["protaugment_protonet", "fsic_nonames", "fsic_best", "fsic_frozen", "intentbert_protocol",
                     "mteb_banking77", "fewrel2_da", "clinc_oos"]
    for name in names:
        assert (config_dir() / "experiment" / f"{name}.yaml").is_file()
        published = load_published(root / "scripts" / "published" / f"{name}.yaml")
        assert published["values"] or published["rows"]  # clinc_oos: rows of scripts/oos_table.py
    bad = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True)
    assert (
        bad.returncode == 2
        and "one of: protaugment_protonet, fsic_nonames, fsic_best, fsic_frozen, intentbert_protocol, mteb_banking77, "
            "fewrel2_da, clinc_oos" in bad.stderr
    )


def test_sweep_tables_get_a_row_for_every_key_the_sweep_varies():
    from metarun.tracking.tables.callbacks import SweepSummary, swept_keys

    overrides = [
        "experiment=x",
        "learner=protonet,maml",
        "trainer.max_steps=0,300",
        "data@eval.test.data=a,b",
        "seed=0,1,2",
        "data.split=1,2",
        "hydra/launcher=parallel",
        "trainer.progress=false",
    ]
    assert swept_keys(overrides) == ["learner", "trainer.max_steps", "test_data", "seed", "data.split"]
    same = [{"data": "banking77", "test_data": "banking77"}]
    assert SweepSummary().table_rows(overrides, same) == ["learner", "trainer.max_steps"]  # seeds, splits averaged
    assert SweepSummary().table_rows(["data=a,b", "data.train_per_class=10,null"], same) == [
        "learner",
        "data.train_per_class",
    ]
    cross = [{"data": "fewrel", "test_data": "pubmed"}]
    assert SweepSummary().table_rows(["data=a,b"], cross) == ["learner", "data"]  # data is not the test column
    assert SweepSummary(rows="encoder").table_rows(overrides, same) == ["encoder"]


def test_sweep_plot_draws_a_line_per_row_label(tmp_path):
    from metarun.tracking.tables.plots import plot_sweep
    from metarun.tracking.tables.results import labels, load_runs

    for i, (k, seed, acc) in enumerate([(1, 0, 80.0), (5, 1, 95.0)]):
        fake_run(tmp_path / "sweep", f"{i}_job", "protonet", k, seed, acc)
    runs = load_runs([tmp_path / "sweep"])
    assert [" / ".join(labels(r, ["learner", "seed", "sampler.k_shot"], "5way_1shot")) for r in runs] == [
        "protonet / 0 / 1",
        "protonet / 1 / 5",
    ]
    png = plot_sweep(runs, tmp_path, lines=["learner", "seed"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unlike_runs_never_share_a_cell(tmp_path, monkeypatch):
    """A frozen and a trained run, or runs on two target files, get rows of their own; seeds pool;
    --pool names other keys that may pool."""
    sweep = tmp_path / "runs"
    for i, (steps, target, seed, acc) in enumerate(
        [(0, "pubmed", 0, 40.0), (0, "pubmed", 1, 42.0), (300, "pubmed", 0, 60.0), (0, "semeval", 0, 30.0)]
    ):
        folder = sweep / f"{i}"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(
            f"seed: {seed}\ntrainer:\n  max_steps: {steps}\neval:\n  test:\n    data:\n      path: {target}.json\n"
        )
        (folder / "results.json").write_text(
            json.dumps(
                {
                    "learner": "protonet",
                    "data": "fewrel",
                    "test_data": "fewrel_file",
                    "seed": seed,
                    "results": {"test/5way_1shot": {"acc": acc, "ci95": 1.0, "episodes": 600}},
                }
            )
        )
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep)]) == 0
    md = (tmp_path / "table.md").read_text()  # the current folder, not a run folder
    assert md.splitlines()[0].startswith("| regime | learner / eval.test.data.path / trainer.max_steps |")
    assert "| protonet / pubmed.json / 0 | 41.00 ± 0.71 (n=2) |" in md  # two seeds pool
    # a one-run cell in a table with a two-run cell says so (n=1)
    assert "| protonet / pubmed.json / 300 | 60.00 ± 1.00 (n=1) |" in md
    assert "| protonet / semeval.json / 0 | 30.00" in md
    assert not (sweep / "table.md").exists()
    assert main([str(sweep), "--pool", "trainer.max_steps,eval.test.data.path"]) == 0
    assert "| protonet | 43.00 ± 0.50 (n=4) |" in (tmp_path / "table.md").read_text()


def test_regimes_never_share_a_row(tmp_path, capsys):
    """Runs alike but for their information regime get rows of their own; a run written before
    results.json recorded it gets its regime from its saved config."""
    sweep = tmp_path / "sweep"
    for name, regime, acc in [("a", "no names, inductive", 80.0), ("b", "names, transductive", 90.0)]:
        fake_run(sweep, name, "protonet", 1, 0, acc)
        record = json.loads((sweep / name / "results.json").read_text())
        (sweep / name / "results.json").write_text(json.dumps(record | {"regime": regime}))
    fake_run(sweep, "old", "protonet", 1, 1, 70.0)  # no regime recorded: read from its config
    (sweep / "old" / ".hydra" / "config.yaml").write_text(
        "sampler:\n  k_shot: 1\nseed: 1\nlearner:\n  label_prior: add\neval:\n  test:\n    transductive_steps: 0\n")
    assert main([str(sweep), "--cols", "setting", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "table.md").read_text()
    assert "| no names, inductive | protonet | 80.00 ± 1.00 |" in md
    assert "| names, transductive | protonet | 90.00 ± 1.00 |" in md
    assert "| names, inductive | protonet | 70.00 ± 1.00 |" in md and "(n=2)" not in md


def test_published_rows_meet_ours_in_their_regime(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "a", "protonet", 1, 0, 80.0)
    published = tmp_path / "published.yaml"
    published.write_text("rows: [learner]\ncols: [setting]\nregime: names, inductive\n"
                         "regimes:\n  protonet: no names, inductive\n"
                         "values:\n  protonet: {5way_1shot: 83.5}\n  pie: {5way_1shot: 92.4}\n")
    assert main([str(sweep), "--published", str(published), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "table_vs_published.md").read_text().splitlines()
    assert lines[2] == "| no names, inductive | protonet | 80.00 ± 1.00 | 83.50 |"  # one row: the same regime
    assert lines[3] == "| names, inductive | pie |  | 92.40 |"  # blocks in order: no names first
    published.write_text("rows: [learner]\nvalues:\n  protonet: {5way_1shot: 83.5}\n")
    assert main([str(sweep), "--published", str(published)]) == 2
    assert "rows without one: protonet" in capsys.readouterr().err
    published.write_text("regime: names\nvalues:\n  protonet: {5way_1shot: 83.5}\n")
    assert main([str(sweep), "--published", str(published)]) == 2
    assert "one of 'no names, inductive', 'no names, transductive'" in capsys.readouterr().err


def test_keys_added_later_count_as_their_defaults(tmp_path):
    """A run saved before a config key existed pools with a new run that has the key at its default."""
    sweep = tmp_path / "sweep"
    fake_run(sweep, "old", "protonet", 1, 0, 80.0)
    fake_run(sweep, "new", "protonet", 1, 1, 82.0)
    (sweep / "new" / ".hydra" / "config.yaml").write_text(
        "sampler:\n  k_shot: 1\nseed: 1\nlearner:\n  consistency_weight: 0.0\n  mlm_weight: 0.0\n")
    assert main([str(sweep), "--cols", "setting", "--out", str(tmp_path)]) == 0
    assert "| no names, inductive | protonet | 81.00 ± 0.71 (n=2) |" in (tmp_path / "table.md").read_text()


def test_unfinished_jobs_are_named_and_uneven_cells_show_their_n(tmp_path, capsys):
    """A sweep with a killed job: the table warns with the folder it leaves out, and when cells pool
    different numbers of runs every cell shows its n."""
    sweep = tmp_path / "sweep"
    fake_run(sweep, "0", "protonet", 1, 0, 80.0)
    fake_run(sweep, "1", "protonet", 1, 1, 82.0)
    fake_run(sweep, "2", "protonet", 5, 0, 90.0)
    killed = sweep / "3"
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "config.yaml").write_text("sampler:\n  k_shot: 5\nseed: 1\n")
    assert main([str(sweep), "--cols", "setting", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "1 run folder(s) have no results.json (unfinished or failed jobs)" in captured.err
    assert str(killed) in captured.err
    table = (tmp_path / "table.md").read_text()
    assert "81.00 ± 0.71 (n=2)" in table and "90.00 ± 1.00 (n=1)" in table


def test_a_file_that_is_not_a_results_file_is_one_message(tmp_path, capsys):
    (tmp_path / "some.csv").write_text("a,b\n1,2\n")
    assert main([str(tmp_path / "some.csv")]) == 2
    assert "some.csv is a file, not a run folder" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text('{"results": {')
    assert main([str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "results.json is not a results file metarun wrote (not valid JSON" in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_written_is_one_message(tmp_path, capsys):
    fake_run(tmp_path / "runs", "a", "protonet", 1, 0, 80.0)
    (tmp_path / "file").write_text("")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert "metarun-table: error: cannot write" in err and "--out" in err
