"""End-to-end runs for feature cache: the unit tests are in tests/unit/test_feature_cache.py."""

from __future__ import annotations


import pytest

from conftest import FAST, run_in_process

from metarun.models.encoders import TransformerEncoder


@pytest.fixture
def count_forwards(monkeypatch):
    calls = []
    forward = TransformerEncoder.forward

    def counted(self, batch):
        calls.append(len(batch["input_ids"]))
        return forward(self, batch)

    monkeypatch.setattr(TransformerEncoder, "forward", counted)
    return calls


def test_a_second_frozen_run_reads_every_feature_from_disk(tmp_path, count_forwards):
    args = [*FAST, "trainer.max_steps=0", "encoder.freeze=true", f"feature_cache.dir={tmp_path / 'cache'}"]
    first = run_in_process(args, tmp_path / "a")
    assert sum(count_forwards) > 0 and list((tmp_path / "cache").glob("*.pt"))
    count_forwards.clear()
    second = run_in_process(args, tmp_path / "b")
    assert count_forwards == []  # nothing encoded: the test set's features came from disk
    assert second["results"] == first["results"]


def test_frozen_runs_share_entries_trained_ones_never(tmp_path):
    """A frozen training run shares entries and a trained encoder never uses the cache."""
    cache = tmp_path / "cache"
    run_in_process(
        [*FAST, "learner=relation", "encoder.freeze=true", f"feature_cache.dir={cache}"], tmp_path / "frozen"
    )
    assert len(list(cache.glob("*.pt"))) >= 2  # validation and test sets (and the training classes, if cached)
    before = set(cache.glob("*.pt"))
    run_in_process([*FAST, f"feature_cache.dir={cache}"], tmp_path / "trained")
    assert set(cache.glob("*.pt")) == before
    run_in_process(
        [*FAST, "trainer.max_steps=0", "feature_cache.enabled=false", f"feature_cache.dir={tmp_path / 'off'}"],
        tmp_path / "off",
    )
    assert not (tmp_path / "off").exists() or not list((tmp_path / "off").glob("*.pt"))


def test_a_frozen_learner_with_nothing_to_train_is_refused(tmp_path):
    """A frozen learner with nothing to train is refused with what to do."""
    from metarun.errors import ConfigError

    with pytest.raises(ConfigError, match="no parameter to train; test the frozen encoder with trainer.max_steps=0"):
        run_in_process([*FAST, "encoder.freeze=true"], tmp_path / "run")
    assert not (tmp_path / "run").exists()
