"""Tokenisation once per (sentences, tokenizer, max_length), cached by `datasets` (data/tokenized.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, sentences, tiny_tokenize
from metarun.config import build
from metarun.data.dataset import Example
from metarun.data.tokenized import PretokenizedTokenizer, pretokenized

pytest.importorskip("datasets")

@pytest.mark.parametrize("pairs", [False, True])
def test_stored_tokens_pad_to_exactly_what_the_tokenizer_gives(tmp_path, pairs):
    tokenize, data = tiny_tokenize(), sentences(60, pairs=pairs)
    cached = pretokenized(tokenize, [data], tmp_path)
    assert isinstance(cached, PretokenizedTokenizer)
    for start, size in ((0, 7), (7, 25), (40, 20), (59, 1)):
        batch = list(data.examples[start : start + size])
        want, got = tokenize(batch), cached(batch)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k  # truncation at max_length and padding included
    if pairs:
        assert cached(list(data.examples[:3]))["token_type_ids"].max() == 1
    unknown = [Example("a sentence the run never saw", "x")]
    assert torch.equal(cached(unknown)["input_ids"], tokenize(unknown)["input_ids"])


def test_a_second_run_reads_the_stored_tokens(tmp_path, monkeypatch):
    """A second run reads the stored tokens instead of tokenising."""
    tokenize, data = tiny_tokenize(), sentences(40)
    pretokenized(tokenize, [data], tmp_path)
    files = list((tmp_path / "metarun_tokens").glob("*.arrow"))
    assert len(files) == 1
    calls = []
    real = type(tokenize.tokenizer).__call__
    monkeypatch.setattr(
        type(tokenize.tokenizer), "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    again = pretokenized(tokenize, [data], tmp_path)
    assert calls == []  # loaded from the Arrow file datasets wrote
    assert torch.equal(again(list(data.examples[:5]))["input_ids"], tokenize(list(data.examples[:5]))["input_ids"])
    pretokenized(tiny_tokenize(max_length=8), [data], tmp_path)  # another max_length: another entry
    pretokenized(tokenize, [sentences(40, seed=1)], tmp_path)  # other sentences: another entry
    assert len(list((tmp_path / "metarun_tokens").glob("*.arrow"))) == 3


def test_entity_markers_keep_tokenising_per_batch(tmp_path):
    tokenize = build(
        compose_cfg(["encoder=tiny", "encoder.entity_markers=true", "encoder.pooling=entity_start"]).encoder, "encoder"
    ).tokenize
    assert pretokenized(tokenize, [sentences(5)], tmp_path) is tokenize
