"""What a run prints while it works: the train bar only when it trains, scores with two decimals."""

from __future__ import annotations

from conftest import FAST, run_in_process
from metarun.trainer import _brief


def test_a_run_without_training_shows_no_train_bar_and_scores_have_two_decimals(tmp_path, capfd):
    args = [a for a in FAST if a != "trainer.progress=false"]
    run_in_process([*args, "trainer.progress=true", "trainer.max_steps=0"], tmp_path / "frozen")
    err = capfd.readouterr().err
    assert "test/5way_1shot" in err and "train:" not in err  # evaluation bars, no empty train bar
    run_in_process([*args, "trainer.progress=true", "trainer.max_steps=2", "trainer.eval_every=2"], tmp_path / "two")
    assert "train: 100%" in capfd.readouterr().err
    assert _brief({"val/5way_5shot": {"acc": 84.6, "ci95": 1.7}}) == "val/5way_5shot 84.60 ± 1.70"
    assert _brief({"val/5way_5shot": {"acc": 84.6, "ci95": None}}) == "val/5way_5shot 84.60"
