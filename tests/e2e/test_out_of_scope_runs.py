"""Runs with out-of-scope queries (the unit tests are in tests/unit/test_out_of_scope.py)."""

import json

import pytest
from conftest import FAST, TABLE_ROWS, csv_file, run_in_process

from metarun.errors import ConfigError, DataError
from metarun.evaluate.out_of_scope import oos_metrics

OOS_ROWS = "".join(f"nothing we do {i},oos\n" for i in range(24))


def oos_args(path) -> list[str]:
    return [*FAST, "data=table", f"data.path={path}", "data.oos_label=oos",
            "data.classes={train: [a, b], val: [c, d], test: [e, b2]}", "sampler.n_way=2", "sampler.k_shot=1",
            "sampler.n_query=1", "eval.val.n_way=2", "eval.val.shots=[1]", "eval.val.n_query=1", "eval.test.n_way=2",
            "eval.test.shots=[1]", "eval.test.n_query=2", "eval.test.oos_rate=1", "eval.test.episodes=6"]


@pytest.mark.parametrize("rule", ["nota", "threshold", "nota threshold"])
def test_out_of_scope_runs_report_the_four_metrics(tmp_path, rule):
    """nota: the learner's own class N; threshold: a cut on the largest class probability; nota
    threshold: a cut on a NOTA learner's own 1 - p(NOTA), each record's conf the decision's probability."""
    rows = TABLE_ROWS + "".join(f"other text of b2 {i},b2\n" for i in range(4)) + OOS_ROWS
    path = csv_file(tmp_path, "text,label\n" + rows)
    threshold = ["eval.test.reject=threshold", "eval.test.threshold_episodes=5"]
    extra = {"nota": ["learner.nota=true"], "threshold": threshold, "nota threshold": ["learner.nota=true", *threshold]}
    results = run_in_process([*oos_args(path), *extra[rule]], tmp_path / "run")["results"]
    scores = results["test/2way_1shot_oos1"]
    assert ("threshold" in scores) == ("threshold" in rule)
    lines = (tmp_path / "run" / "episodes" / "test_2way_1shot_oos1.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 6 and all(r["gold"].count(2) == 2 and len(r["oos"]) == 6 for r in records)
    assert {k: scores[k] for k in oos_metrics(records)} == oos_metrics(records)  # the record holds the numbers


def test_out_of_scope_options_are_refused_with_what_to_do(tmp_path):
    path = csv_file(tmp_path, "text,label\n" + TABLE_ROWS + "".join(f"x {i},b2\n" for i in range(4)) + OOS_ROWS)
    with pytest.raises(ConfigError, match="this learner does not predict NOTA: set learner.nota=true .* or "
                                          "eval.test.reject=threshold"):
        run_in_process(oos_args(path), tmp_path / "a")
    with pytest.raises(DataError, match="data 'banking77' has no test out-of-scope examples. Set data.oos_label"):
        run_in_process([*FAST, "learner.nota=true", "eval.test.oos_rate=1"], tmp_path / "c")
    # a threshold with nothing to reject was ignored without a word (FewRel's na_rate queries)
    with pytest.raises(ConfigError, match=r"eval.test.reject=threshold rejects .*oos_rate is 0; eval.test.na_rate's "
                                          r"none-of-the-above queries are predicted by a NOTA learner"):
        run_in_process([*FAST, "learner.nota=true", "eval.test.na_rate=1", "eval.test.reject=threshold"],
                       tmp_path / "d")


def test_clinc_oos_runs_episodes_and_the_per_intent_protocol(clinc_oos_file, tmp_path):
    data = ["data=clinc_oos", f"data.path={clinc_oos_file}", "data.split_file=null",
            "data.classes={train: [i0, i1, i2], val: [i3, i4, i5], test: [i6, i7, i8]}",
            "sampler.n_way=3", "eval.val.n_way=3"]
    episodes = run_in_process([*FAST, *data, "eval.test.n_way=3", "learner.nota=true", "eval.test.oos_rate=1"],
                              tmp_path / "episodes")
    assert set(episodes["results"]) >= {"test/3way_1shot_oos1", "test/3way_5shot_oos1"}
    per_intent = run_in_process([*FAST, *data, "eval=clinc_oos_per_class", "eval.test.shots=[2]",
                                 "eval.test.draws=2", "trainer.max_steps=0"], tmp_path / "per_intent")
    scores = per_intent["results"]["test/clinc_oos_2per_class"]
    assert scores["draws"] == 2 and "oos_recall" in scores and "in_scope_acc" in scores
    assert scores["threshold_rule"] == "accuracy" and scores["threshold_chosen_on"].startswith("validation set: ")
    balanced = run_in_process([*FAST, *data, "eval=clinc_oos_per_class", "eval.test.shots=[2]", "eval.test.draws=2",
                               "trainer.max_steps=0", "eval.test.threshold_rule=balanced"], tmp_path / "balanced")
    assert balanced["results"]["test/clinc_oos_2per_class"]["threshold_rule"] == "balanced"
    # scripts/oos_table.py: one row per run, beside the published rows (closed-set: nothing rejected)
    import subprocess
    import sys

    from conftest import REPO

    table = subprocess.run([sys.executable, str(REPO / "scripts" / "oos_table.py"), str(tmp_path), "--published",
                            str(REPO / "scripts" / "published" / "clinc_oos.yaml")], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    ours = [line for line in table.stdout.splitlines() if "tiny frozen + logistic regression" in line]
    assert len(ours) == 2 and any("rule balanced" in line for line in ours)
    closed = scores["closed_set_acc"]
    assert closed >= scores["in_scope_acc"] and f"| {closed:.2f} |" in ours[0]
    assert "DNNC" in table.stdout and "96.20" in table.stdout  # DNNC's and Larson's published rows
    assert "minilm" not in table.stdout.lower().replace("all-minilm", "")  # each row names its run's encoder


def test_training_draws_none_of_the_above_queries_from_oos_train(clinc_oos_file, tmp_path, caplog):
    """sampler.na_source=oos_train: NOTA training queries are the data's training out-of-scope utterances."""
    import logging

    data = ["data=clinc_oos", f"data.path={clinc_oos_file}", "data.split_file=null",
            "data.classes={train: [i0, i1, i2], val: [i3, i4, i5], test: [i6, i7, i8]}",
            "sampler.n_way=3", "eval.val.n_way=3", "eval.test.n_way=3", "learner.nota=true", "eval.test.oos_rate=1"]
    with caplog.at_level(logging.INFO, logger="metarun"):
        results = run_in_process([*FAST, *data, "sampler.na_rate=1", "sampler.n_query=2",
                                  "sampler.na_source=oos_train"], tmp_path / "run")
    assert "training none-of-the-above queries: 6 out-of-scope examples" in caplog.text
    assert "out-of-scope pools 6 train / 12 val / 20 test" in caplog.text  # beside the class counts
    assert "/ 3 test classes" in caplog.text  # the test pool is not counted as a class
    assert "oos_recall" in results["results"]["test/3way_1shot_oos1"]
    with pytest.raises(ConfigError, match="sampler.na_source=oos_train .* data 'banking77' has none"):
        run_in_process([*FAST, "learner.nota=true", "sampler.na_rate=1", "sampler.na_source=oos_train"], tmp_path / "b")
    with pytest.raises(ConfigError, match="sampler.na_source='pool' is not valid; choose one of: classes, oos_train"):
        run_in_process([*FAST, "sampler.na_source=pool"], tmp_path / "c")


def test_outlier_exposure_reads_the_runs_out_of_scope_pool(clinc_oos_file, tmp_path):
    data = ["data=clinc_oos", f"data.path={clinc_oos_file}", "data.split_file=null",
            "data.classes={train: [i0, i1, i2], val: [i3, i4, i5], test: [i6, i7, i8]}",
            "sampler.n_way=3", "eval.val.n_way=3", "eval.test.n_way=3", "eval.test.oos_rate=1",
            "eval.test.reject=threshold", "eval.test.threshold_episodes=5"]
    results = run_in_process([*FAST, *data, "objective=[outlier]", "unlabelled=oos_train",
                              "objective.outlier.batch_size=4"], tmp_path / "run")
    assert results["unlabelled"]["examples"] == 6 and "oos_recall" in results["results"]["test/3way_1shot_oos1"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["train/outlier"] for r in rows if "train/outlier" in r) and any("train/outlier" in r for r in rows)
    with pytest.raises(ConfigError, match="unlabelled=oos_train reads the run's training out-of-scope utterances"):
        run_in_process([*FAST, "objective=[outlier]", "unlabelled=oos_train"], tmp_path / "b")
