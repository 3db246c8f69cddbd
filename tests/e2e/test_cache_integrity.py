"""No cache content, however altered, can change a result: every entry of the feature cache
(evaluate/feature_cache.py) and the token cache (data/tokenized.py) carries a digest of its key and
contents, checked on read; anything else is a miss, reported once by file and made again. A cache
folder that cannot be used costs the cache, never the run."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from conftest import CPU, FAST, SMALL_DATA, run_in_process, sentences, tiny_protonet, tiny_tokenize
from metarun.data.tokenized import PretokenizedTokenizer, pretokenized
from metarun.evaluate.common import encode_examples
from metarun.evaluate.feature_cache import STALE_TMP_S, FeatureCache

FROZEN = [*FAST, "trainer.max_steps=0", "token_cache=false"]


def only_entry(folder, pattern="*.pt"):
    (entry,) = folder.glob(pattern)
    return entry


def flip_bytes(path, count=400):
    """Invert `count` bytes in the second half of the file (the tensor's storage, not its header)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    for i in range(start, min(start + count, len(data) - 1)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- the feature cache --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A frozen run without any cache: what every cached run below must reproduce exactly."""
    folder = tmp_path_factory.mktemp("reference")
    return run_in_process([*FROZEN, "feature_cache.enabled=false"], folder / "run")["results"]


def alter_shuffled_rows(entry):
    stored = torch.load(entry, weights_only=True)
    stored["features"] = stored["features"][torch.randperm(len(stored["features"]))]  # valid, same shape
    torch.save(stored, entry)


def alter_foreign_key(entry):
    stored = torch.load(entry, weights_only=True)
    stored["key"] = "0" * 40
    torch.save(stored, entry)


def alter_old_format(entry):
    torch.save(torch.load(entry, weights_only=True)["features"].flip(0), entry)  # a bare tensor, as format 1 was


@pytest.mark.parametrize("alter", [flip_bytes, alter_shuffled_rows, alter_foreign_key, alter_old_format,
                                   lambda e: e.write_bytes(e.read_bytes()[:100])],
                         ids=["400 bytes flipped", "rows shuffled", "foreign key", "format 1", "cut short"])
def test_altered_feature_entries_are_misses(tmp_path, reference, caplog, alter):
    """Altered feature entries are misses and results stay exact."""
    cache = tmp_path / "cache"
    args = [*FROZEN, f"feature_cache.dir={cache}"]
    assert run_in_process(args, tmp_path / "first")["results"] == reference
    entries = sorted(cache.glob("*.pt"))
    for entry in entries:
        alter(entry)
    with caplog.at_level(logging.WARNING, "metarun"):
        again = run_in_process(args, tmp_path / "second")
    assert again["results"] == reference
    warned = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warned) == len(entries) and all(any(str(e) in w for w in warned) for e in entries)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "metarun"):  # written again, intact: a clean hit
        assert run_in_process(args, tmp_path / "third")["results"] == reference
    assert "feature cache" not in caplog.text


def test_a_cache_folder_that_is_a_file_warns(tmp_path, reference, caplog):
    """A cache folder that is a file costs the cache with one warning."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    with caplog.at_level(logging.WARNING, "metarun"):
        results = run_in_process([*FROZEN, f"feature_cache.dir={blocker}"], tmp_path / "run")["results"]
    assert results == reference
    warned = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warned) == 1 and str(blocker) in warned[0] and "without the cache" in warned[0]
    assert blocker.read_text() == "a file"


def test_a_full_or_unwritable_cache_warns_once(tmp_path, monkeypatch, caplog):
    """A full or unwritable cache folder costs the cache with one warning."""
    import errno

    import metarun.evaluate.feature_cache as fc

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fc, "atomic_write", full)
    learner, cache = tiny_protonet(), FeatureCache(tmp_path)
    with caplog.at_level(logging.WARNING, "metarun"), torch.inference_mode():
        fresh = encode_examples(learner, SMALL_DATA, CPU, 4, "", False)
        for _ in range(3):
            assert torch.equal(encode_examples(learner, SMALL_DATA, CPU, 4, "", False, cache=cache), fresh)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "No space left" in warned[0] and not cache.enabled


def test_temporary_files_of_killed_writes_go(tmp_path):
    """Temporary files of killed writes are removed and counted."""
    stale, live = tmp_path / ".k.pt.abc.tmp", tmp_path / ".k2.pt.def.tmp"
    stale.write_bytes(b"x" * 4096)
    live.write_bytes(b"x" * 4096)
    old = time.time() - STALE_TMP_S - 60
    os.utime(stale, (old, old))
    cache = FeatureCache(tmp_path)
    assert cache.get("missing", 4) is None  # first use sweeps the folder
    assert not stale.exists() and live.exists()  # a recent one may be another job's write in flight
    cache.put("k0", torch.zeros(4, 256))
    size = cache.path("k0").stat().st_size
    cache.max_bytes = 2 * size + 4096 - 1  # room for two entries, but not beside the live temporary file
    cache.put("k1", torch.zeros(4, 256))
    assert not cache.path("k0").exists() and cache.path("k1").exists()


# -- the token cache ----------------------------------------------------------------------------

def replace_bytes(path, data: bytes):
    """The file's content replaced by a new file (as another process would write it): an Arrow file
    this process still has memory-mapped keeps its old pages."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rewrite_arrow(path, change):
    """Write the Arrow stream at `path` again with `change(list of id lists)` applied to input_ids: a
    valid file of the right shape whose ids differ."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_stream(src).read_all()
    i = table.schema.get_field_index("input_ids")
    ids = change(table.column(i).to_pylist())
    table = table.set_column(i, table.schema.field(i), pa.array(ids, type=table.schema.field(i).type))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    replace_bytes(path, sink.getvalue().to_pybytes())


def one_id_changed(ids):
    ids[0][1] += 1  # one token of the first sentence
    return ids


@pytest.mark.parametrize("alter", [
    lambda f: rewrite_arrow(f, one_id_changed),
    lambda f: rewrite_arrow(f, lambda ids: ids[1:] + ids[:1]),
    lambda f: replace_bytes(f, f.read_bytes()[: f.stat().st_size // 2]),
    lambda f: replace_bytes(f, b"\0" * 64 + f.read_bytes()[64:]),
    lambda f: f.with_name(f.stem + ".digest.json").unlink(),
], ids=["ids altered", "rows reordered", "cut short", "metadata overwritten", "digest missing"])
def test_altered_token_entries_are_misses_and_made_again(tmp_path, caplog, alter):
    tokenize, data = tiny_tokenize(), sentences(40)
    pretokenized(tokenize, [data], tmp_path)
    entry = only_entry(tmp_path / "metarun_tokens", "*.arrow")
    alter(entry)
    with caplog.at_level(logging.WARNING, "metarun"):
        again = pretokenized(tokenize, [data], tmp_path)
    assert isinstance(again, PretokenizedTokenizer)
    assert f"token cache: {entry} is unusable" in caplog.text
    batch = list(data.examples)
    for k, want in tokenize(batch).items():
        assert torch.equal(again(batch)[k], want), k
    caplog.clear()
    with caplog.at_level(logging.WARNING, "metarun"):  # made again, intact: a clean hit
        pretokenized(tokenize, [data], tmp_path)
    assert caplog.text == ""


def test_an_altered_token_entry_is_not_used(tmp_path, monkeypatch):
    """A run reading an altered token entry gives the results of a run without it."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    off = run_in_process([*FAST, "token_cache=false"], tmp_path / "off")["results"]
    assert run_in_process([*FAST, "token_cache=true"], tmp_path / "a")["results"] == off
    rewrite_arrow(only_entry(tmp_path / "hf" / "metarun_tokens", "*.arrow"), lambda ids: ids[::-1])
    assert run_in_process([*FAST, "token_cache=true"], tmp_path / "b")["results"] == off


def test_an_unmakeable_token_cache_is_skipped(tmp_path, caplog):
    """A token cache folder that cannot be made tokenises without it."""
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    tokenize = tiny_tokenize()
    with caplog.at_level(logging.WARNING, "metarun"):
        assert pretokenized(tokenize, [sentences(10)], blocker) is tokenize
    assert "token cache: cannot use" in caplog.text and str(blocker) in caplog.text
