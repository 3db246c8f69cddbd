"""End-to-end runs of ProtoNet's options: the unit tests are in tests/unit/test_protonet.py."""

import pytest
from conftest import FAST, run_in_process

from metarun.errors import ConfigError


def test_transductive_eval_runs_and_needs_its_learner(tmp_path):
    results = run_in_process([*FAST, "trainer.max_steps=0", "eval.test.transductive_steps=2"], tmp_path / "run")
    assert set(results["results"]) == {"test/5way_1shot", "test/5way_5shot"}
    with pytest.raises(ConfigError, match=r"eval.test.transductive_steps=2 .* learner=matching does not take"):
        run_in_process([*FAST, "learner=matching", "eval.test.transductive_steps=2"], tmp_path / "bad")


def test_a_learned_label_prior_trains_and_tests(tmp_path):
    results = run_in_process([*FAST, "learner.label_prior=learned"], tmp_path / "run")
    assert results["results"]["test/5way_1shot"]["episodes"] == 20


def test_support_tuning_runs_end_to_end(tmp_path):
    results = run_in_process(
        [*FAST, "trainer.max_steps=0", "learner.support_tuning_steps=2", "eval.test.episodes=4"], tmp_path / "run"
    )
    assert results["results"]["test/5way_1shot"]["episodes"] == 4
