"""Per-episode records (tracking/folder/episodes.py) and `metarun-compare` (tracking/tables/compare.py): paired
differences on the same episodes, checked against hand computations and end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FAST, read_json, run_in_process
from metarun.tracking.folder import episodes
from metarun.tracking.tables.compare import CompareError, compare, load, main, paired, sign_flip_exact

ARGS = [*FAST, "trainer.max_steps=3", "trainer.eval_every=3"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    a = run_in_process([*ARGS, "seed=1"], root / "a")
    b = run_in_process([*ARGS, "seed=2"], root / "b")
    return root / "a", root / "b", a, b


def test_episode_records_are_strict_small_and_agree(two_seeds):
    """Every run writes strict small records that agree with its results."""
    run_a, _, results, _ = two_seeds
    records = episodes.read(run_a)
    assert set(records) == {k for k in results["results"] if k.startswith("test/")}
    for setting, lines in records.items():
        assert len(lines) == results["results"][setting]["episodes"] == 20
        assert round(float(episodes.accuracies(lines).mean()), 2) == results["results"][setting]["acc"]
        first = lines[0]
        assert len(first["classes"]) == 5 and len(first["gold"]) == len(first["pred"]) == len(first["conf"]) == 25
        assert all(0.0 <= c <= 1.0 for c in first["conf"]) and first["episode"] == 0
        path = run_a / "episodes" / episodes.file_name(setting)
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
        assert path.stat().st_size < 25 * 1024  # 20 episodes; about 0.5 KB each


def test_bootstrap_and_sign_flip_match_hand_maths():
    """The bootstrap and the sign flip test match hand computations."""
    a, b = np.array([80.0, 60.0, 100.0, 40.0]), np.array([60.0, 60.0, 80.0, 60.0])
    d = a - b  # 20, 0, 20, -20: mean 5
    out = paired(a, b, seed=3, resamples=2000)
    assert out["diff"] == pytest.approx(5.0) and (out["wins"], out["ties"], out["losses"]) == (2, 1, 1)
    rng = np.random.default_rng(3)  # the same draws, by hand: bootstrap block, then sign flips
    boot = d[rng.integers(0, 4, size=(1000, 4))].mean(1)
    flips = rng.choice(np.array([-1.0, 1.0]), size=(1000, 4))
    boot2 = d[rng.integers(0, 4, size=(1000, 4))].mean(1)
    flips2 = rng.choice(np.array([-1.0, 1.0]), size=(1000, 4))
    low, high = np.percentile(np.concatenate([boot, boot2]), [2.5, 97.5])
    extreme = np.sum(np.abs((flips * d).mean(1)) >= 5 - 1e-9) + np.sum(np.abs((flips2 * d).mean(1)) >= 5 - 1e-9)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((low, high))
    assert out["p"] == pytest.approx((extreme + 1) / 2001)
    # every sign pattern of (3, 1, 2): sums 6, 4, 2, 0, 0, -2, -4, -6, so |sum| >= 6 in 2 of 8
    assert sign_flip_exact(np.array([3.0, 1.0, 2.0])) == pytest.approx(2 / 8)
    assert sign_flip_exact(np.array([3.0, 1.0])) == pytest.approx(2 / 4)
    assert sign_flip_exact(d) == 1.0  # (20, 0, 20, -20): every pattern sums to +-20 or +-60, |mean| >= 5


def test_a_run_against_itself_differs_by_nothing_with_p_one(two_seeds):
    run_a = two_seeds[0]
    rows = compare(load(run_a), load(run_a), resamples=500)
    assert rows and all(r["diff"] == 0 and r["p"] == 1.0 and r["ci_low"] == r["ci_high"] == 0 for r in rows)


def test_two_seeds_on_the_same_episodes_are_paired_and_written(two_seeds, tmp_path, capsys):
    run_a, run_b, a, b = two_seeds
    assert main([str(run_a), str(run_b), "--out", str(tmp_path), "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "| test/5way_1shot |" in printed and "A - B [95% CI]" in printed
    assert f"A: {run_a} (no names, inductive)" in printed  # each side's information regime
    for key in ("test/5way_1shot", "test/5way_5shot"):
        diff = a["results"][key]["acc"] - b["results"][key]["acc"]
        row = next(r for r in compare(load(run_a), load(run_b), resamples=500) if r["setting"] == key)
        assert row["diff"] == pytest.approx(diff, abs=0.01) and row["ci_low"] <= row["diff"] <= row["ci_high"]
    assert {p.name for p in tmp_path.iterdir()} == {"compare.md", "compare.csv", "compare.tex"}


def test_other_episodes_are_refused_naming_what_differs(two_seeds, tmp_path):
    run_a = two_seeds[0]
    other = run_in_process([*ARGS, "seed=1", "eval.seed=7"], tmp_path / "other")
    assert other["results"]
    with pytest.raises(CompareError, match=r"not tested on the same episodes.*eval.seed: 1234 in A, 7 now"):
        compare(load(run_a), load(tmp_path / "other"))


def two_sweeps(two_seeds, root, override: str) -> list[dict]:
    """Sweeps A (seed 1) and B (seed 2) of two runs each: the module's runs, and one with `override`;
    -> the compared 1-shot rows."""
    sweeps = {"a": root / "sweep_a", "b": root / "sweep_b"}
    for sweep, run, seed in zip(sweeps.values(), two_seeds[:2], (1, 2)):
        shutil.copytree(run, sweep / "first")
        run_in_process([*ARGS, f"seed={seed}", override], sweep / "second")
    rows = compare(load(sweeps["a"]), load(sweeps["b"]), resamples=500)
    return [r for r in rows if r["setting"] == "test/5way_1shot"]


def test_sweeps_pair_by_split_and_summarise_over_splits(two_seeds, tmp_path):
    rows = two_sweeps(two_seeds, tmp_path, "data.split=2")
    assert [r["split"] for r in rows] == ["banking77, split 1", "banking77, split 2", "mean over 2 splits"]
    summary = rows[-1]
    assert summary["diff"] == pytest.approx((rows[0]["diff"] + rows[1]["diff"]) / 2)
    assert summary["sd"] == pytest.approx(np.std([rows[0]["diff"], rows[1]["diff"]], ddof=1))


def test_a_run_without_records_is_named_with_what_to_do(two_seeds, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(two_seeds[0], old)
    shutil.rmtree(old / "episodes")  # made before runs wrote records
    with pytest.raises(CompareError, match=r"no per-episode records.*metarun-eval"):
        load(old)
    assert read_json(old / "results.json")["results"]  # the run itself still reads as before


def test_the_report_agrees_with_results_and_draws_its_plots(two_seeds, tmp_path):
    from metarun.tracking.tables.report import calibration, main as report_main

    run_a, _, results, _ = two_seeds
    assert report_main([str(run_a)]) == 0
    report = (run_a / "report" / "report.md").read_text()
    for setting, score in results["results"].items():
        if setting.startswith("test/"):
            assert f"| {setting} | {setting[-5]} | {score['acc']:.2f} | {score['ci95']:.2f} |" in report
    assert {p.name for p in (run_a / "report").glob("*.png")} == {
        "reliability.png", "confusion_test_5way_1shot.png", "confusion_test_5way_5shot.png"}
    # misclassified queries beside their nearest support example: real texts of the episode's classes
    mistakes = json.loads((run_a / "episodes" / "test_5way_1shot.mistakes.json").read_text())
    records = [json.loads(line) for line in (run_a / "episodes" / "test_5way_1shot.jsonl").read_text().splitlines()]
    first = records[mistakes[0]["episode"]]
    assert len(mistakes) == 20 and all(m["gold"] != m["pred"] for m in mistakes)
    assert {mistakes[0]["gold"], mistakes[0]["pred"], mistakes[0]["nearest_class"]} <= set(first["classes"])
    assert "Misclassified queries and the support example nearest" in report and mistakes[0]["query"][:20] in report
    # ECE by hand: confidences 0.9, 0.9 (one right) and 0.6 (right) in bins 9 and 6
    ece, table = calibration([("a", "a", 0.9), ("a", "b", 0.9), ("b", "b", 0.6)])
    assert ece == pytest.approx(100 * (2 / 3 * abs(0.9 - 0.5) + 1 / 3 * abs(0.6 - 1.0)))
    assert table == [(pytest.approx(0.6), 1.0, 1), (pytest.approx(0.9), 0.5, 2)]


def test_training_profiles_stay_separate_rows(two_seeds, tmp_path):
    """Training profiles on the same episodes stay separate rows."""
    rows = two_sweeps(two_seeds, tmp_path, "data.train_per_class=10")
    assert {r["split"] for r in rows} >= {"banking77, split 1", "banking77, split 1, 10 per class"}
    assert all(r["runs"] in ("1/1", "2/2") for r in rows)  # never the two profiles averaged together


@pytest.mark.parametrize("edit,words", [
    (lambda r: r | {"pred": ["xyz"] * len(r["pred"])}, "pred must be 25 labels from 0 to 5"),
    (lambda r: r | {"pred": [99] * len(r["pred"])}, "pred must be 25 labels from 0 to 5"),
    (lambda r: r | {"conf": ["high"] * len(r["conf"])}, "conf must be 25 finite numbers"),
    (lambda r: r | {"classes": 5}, "classes must be a list of class names"),
    (lambda r: r | {"pred": r["gold"]}, "its episodes' accuracy is .* results.json says"),
])
def test_compare_and_report_refuse_damaged_records(two_seeds, tmp_path, capsys, edit, words):
    """A record changed after the run is refused by metarun-compare and metarun-report, naming the file
    (and the line, where one record is malformed), never read into a different number."""
    from metarun.tracking.tables import report

    run_a, run_b, _, _ = two_seeds
    damaged = tmp_path / "a"
    shutil.copytree(run_a, damaged)
    path = damaged / "episodes" / "test_5way_1shot.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    wrong = next(i for i, r in enumerate(lines) if r["gold"] != r["pred"])  # an episode with a mistake
    lines[wrong] = edit(lines[wrong])
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main([str(damaged), str(run_b)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and pytest.importorskip("re").search(words, err), err
    assert "Traceback" not in err
    assert report.main([str(damaged)]) != 0
    assert str(path) in capsys.readouterr().err


def test_a_truncated_record_file_is_named_with_its_line(two_seeds, tmp_path, capsys):
    run_a, run_b, _, _ = two_seeds
    damaged = tmp_path / "a"
    shutil.copytree(run_a, damaged)
    path = damaged / "episodes" / "test_5way_5shot.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a write cut short: the last line ends mid-record
    assert main([str(damaged), str(run_b)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 20: not a JSON record" in err and "Traceback" not in err


def test_sweep_jobs_that_are_not_repeats_are_never_averaged(two_seeds, tmp_path, capsys):
    """A sweep over sampler.k_shot against one run: its jobs are different experiments, so each is a row
    of its own (labelled with the key) and pairs with the run of the same value; the unmatched job is named."""
    run_a, _, _, _ = two_seeds
    sweep = tmp_path / "sweep"
    run_in_process([*ARGS, "seed=1", "sampler.k_shot=2"], sweep / "0")
    shutil.copytree(run_a, sweep / "1")  # seed 1, sampler.k_shot=5
    b = tmp_path / "b"
    run_in_process([*ARGS, "seed=3"], b)
    rows = compare(load(sweep), load(b), resamples=200)
    assert {r["split"] for r in rows} == {"banking77, split 1, sampler.k_shot=5"}
    assert all(r["runs"] == "1/1" for r in rows)
    assert "no partner on the other side for A: banking77, split 1, sampler.k_shot=2" in capsys.readouterr().err


def test_an_out_folder_that_cannot_be_made_is_one_message(two_seeds, tmp_path, capsys):
    run_a, run_b, _, _ = two_seeds
    (tmp_path / "file").write_text("")
    assert main([str(run_a), str(run_b), "--resamples", "200", "--out", str(tmp_path / "file" / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "metarun-compare: error: cannot write" in err and "a part of the path is a file" in err
