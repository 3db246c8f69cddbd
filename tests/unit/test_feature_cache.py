"""The on-disk feature cache of frozen encoders (metarun/evaluate/feature_cache.py)."""

from __future__ import annotations

import logging

import torch

from conftest import CPU, SMALL_DATA, tiny_protonet
from metarun.evaluate.common import encode_examples
from metarun.evaluate.feature_cache import FeatureCache



def test_cached_features_equal_fresh_ones(tmp_path):
    """Cached features equal fresh ones and keys follow weights texts and settings."""
    learner, cache = tiny_protonet(), FeatureCache(tmp_path)
    with torch.inference_mode():
        fresh = encode_examples(learner, SMALL_DATA, CPU, 4, "", False)
        stored = encode_examples(learner, SMALL_DATA, CPU, 4, "", False, cache=cache)
        again = encode_examples(learner, SMALL_DATA, CPU, 4, "", False, cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert torch.equal(stored, fresh) and torch.equal(again, fresh)
    key = cache.key(learner.encoder, SMALL_DATA.examples, CPU, None)
    assert key == cache.key(tiny_protonet().encoder, SMALL_DATA.examples, CPU, None)  # same weights, same key
    assert key != cache.key(tiny_protonet(seed=1).encoder, SMALL_DATA.examples, CPU, None)
    assert key != cache.key(learner.encoder, SMALL_DATA.examples[:-1], CPU, None)
    assert key != cache.key(learner.encoder, SMALL_DATA.examples, CPU, torch.bfloat16)
    with torch.no_grad():
        learner.encoder.model.embeddings.word_embeddings.weight[0, 0] += 1e-3
    assert key != cache.key(learner.encoder, SMALL_DATA.examples, CPU, None)
    learner.encoder.tokenize.max_length = 8
    assert cache.key(learner.encoder, SMALL_DATA.examples, CPU, None) != key


def test_a_damaged_entry_is_a_miss_and_is_written_again(tmp_path, caplog):
    learner, cache = tiny_protonet(), FeatureCache(tmp_path)
    with torch.inference_mode():
        fresh = encode_examples(learner, SMALL_DATA, CPU, 4, "", False, cache=cache)
    (entry,) = tmp_path.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:50])  # cut short
    with caplog.at_level(logging.WARNING, "metarun"), torch.inference_mode():
        again = encode_examples(learner, SMALL_DATA, CPU, 4, "", False, cache=cache)
    assert f"{entry} is unusable" in caplog.text and torch.equal(again, fresh)
    assert torch.equal(torch.load(entry, weights_only=True)["features"], fresh)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_the_cache_evicts_the_least_recently_used(tmp_path):
    """The folder stays under its bound evicting the least recently used."""
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
