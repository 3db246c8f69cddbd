"""torchrun on CPU (gloo, 2 processes) gives the single-process run with the same global meta-batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FAST, read_json, run_in_process

NO_DROPOUT = ["+encoder.config_overrides.hidden_dropout_prob=0.0",
              "+encoder.config_overrides.attention_probs_dropout_prob=0.0"]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_two_process_maml_equals_one_process(tmp_path):
    args = [*FAST, "learner=maml", "trainer.meta_batch=2", "trainer.max_steps=4", "eval.test.episodes=10",
            "eval.test.shots=[1]", "eval.val.episodes=6", *NO_DROPOUT]
    single, double = tmp_path / "single", tmp_path / "double"
    run_in_process(args, single)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "metarun", *args,
                          f"hydra.run.dir={double}"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(double) == pytest.approx(losses(single), rel=1e-5)
    a, b = read_json(single / "results.json"), read_json(double / "results.json")
    assert b["steps"] == a["steps"] == 4 and b["results"].keys() == a["results"].keys()
    # the all-reduce sums gradients in another order than one process: weights agree to float rounding,
    # so a query near a decision boundary may flip; 10 episodes of 25 queries: one flip moves 0.4 points
    for key, score in a["results"].items():
        assert b["results"][key]["acc"] == pytest.approx(score["acc"], abs=0.81), key
    assert read_json(double / "run_info.json")["world_size"] == 2


def test_a_meta_batch_smaller_than_the_process_count_is_refused(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "metarun", *FAST,
                          "trainer.meta_batch=1", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode != 0 and "trainer.meta_batch=1 gives some of the 2 processes no task" in res.stderr
