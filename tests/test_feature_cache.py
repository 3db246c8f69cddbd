"""The on-disk feature cache of frozen encoders (metarun/evaluate/feature_cache.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import FAST, compose_cfg, run_in_process
from metarun.config import build
from metarun.data.dataset import Example, FewShotDataset
from metarun.evaluate.common import encode_examples
from metarun.evaluate.feature_cache import FeatureCache
from metarun.learners.metric.protonet import ProtoNet
from metarun.models.encoders import TransformerEncoder

CPU = torch.device("cpu")
DATA = FewShotDataset(tuple(Example(f"sentence {i} about thing {i % 3}", str(i % 3)) for i in range(12)), "test")


def tiny_learner(seed: int = 0) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(build(compose_cfg(["encoder=tiny"]).encoder, "encoder")).eval()


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


def test_a_frozen_training_run_shares_entries_and_a_trained_encoder_never_uses_the_cache(tmp_path):
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


def test_cached_features_equal_fresh_ones_and_keys_follow_weights_texts_and_settings(tmp_path):
    learner, cache = tiny_learner(), FeatureCache(tmp_path)
    with torch.inference_mode():
        fresh = encode_examples(learner, DATA, CPU, 4, "", False)
        stored = encode_examples(learner, DATA, CPU, 4, "", False, cache=cache)
        again = encode_examples(learner, DATA, CPU, 4, "", False, cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert torch.equal(stored, fresh) and torch.equal(again, fresh)
    key = cache.key(learner.encoder, DATA.examples, CPU, None)
    assert key == cache.key(tiny_learner().encoder, DATA.examples, CPU, None)  # same weights, same key
    assert key != cache.key(tiny_learner(seed=1).encoder, DATA.examples, CPU, None)
    assert key != cache.key(learner.encoder, DATA.examples[:-1], CPU, None)
    assert key != cache.key(learner.encoder, DATA.examples, CPU, torch.bfloat16)
    with torch.no_grad():
        learner.encoder.model.embeddings.word_embeddings.weight[0, 0] += 1e-3
    assert key != cache.key(learner.encoder, DATA.examples, CPU, None)
    learner.encoder.tokenize.max_length = 8
    assert cache.key(learner.encoder, DATA.examples, CPU, None) != key


def test_a_damaged_entry_is_a_miss_and_is_written_again(tmp_path, caplog):
    learner, cache = tiny_learner(), FeatureCache(tmp_path)
    with torch.inference_mode():
        fresh = encode_examples(learner, DATA, CPU, 4, "", False, cache=cache)
    (entry,) = tmp_path.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:50])  # cut short
    with caplog.at_level(logging.WARNING, "metarun"), torch.inference_mode():
        again = encode_examples(learner, DATA, CPU, 4, "", False, cache=cache)
    assert f"{entry} is unusable" in caplog.text and torch.equal(again, fresh)
    assert torch.equal(torch.load(entry, weights_only=True)["features"], fresh)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_a_frozen_learner_with_nothing_to_train_is_refused_with_what_to_do(tmp_path):
    from metarun.errors import ConfigError

    with pytest.raises(ConfigError, match="no parameter to train; test the frozen encoder with trainer.max_steps=0"):
        run_in_process([*FAST, "encoder.freeze=true"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_folder_stays_under_its_bound_evicting_the_least_recently_used(tmp_path):
    import os

    cache = FeatureCache(tmp_path)
    cache.put("k0", torch.zeros(4, 256))
    cache.max_bytes = int(3.5 * cache.path("k0").stat().st_size)  # room for three entries
    for i in range(3):
        cache.put(f"k{i}", torch.full((4, 256), float(i)))
        os.utime(cache.path(f"k{i}"), (i, i))
    assert cache.get("k0", 4) is not None  # k0 is now the most recently used
    cache.put("k3", torch.zeros(4, 256))
    assert not cache.path("k1").exists() and cache.path("k0").exists() and cache.path("k3").exists()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.pt")) <= cache.max_bytes


def test_an_unwritable_cache_folder_costs_the_cache_not_the_run(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = FeatureCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, "metarun"):
        cache.put("k", torch.zeros(2, 2))
    assert "could not write" in caplog.text
