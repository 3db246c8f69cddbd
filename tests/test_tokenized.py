"""Tokenisation once per (sentences, tokenizer, max_length), cached by `datasets` (data/tokenized.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, compose_cfg, run_in_process
from metarun.config import build
from metarun.data.dataset import Example, FewShotDataset
from metarun.data.tokenized import PretokenizedTokenizer, pretokenized

pytest.importorskip("datasets")

WORDS = "the a card my arrived when will money transfer account pin why is not working still".split()


def sentences(n: int, seed: int = 0, pairs: bool = False) -> FewShotDataset:
    import random

    rng = random.Random(seed)
    make = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))  # noqa: E731
    return FewShotDataset(tuple(Example(make(), str(i % 4), text_pair=make() if pairs else None) for i in range(n)),
                          "generated")


def tiny_tokenize(max_length: int = 16):
    return build(compose_cfg(["encoder=tiny", f"encoder.max_length={max_length}"]).encoder, "encoder").tokenize


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


def test_a_second_run_reads_the_stored_tokens_instead_of_tokenising(tmp_path, monkeypatch):
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


def test_runs_with_and_without_the_token_cache_give_the_same_results(tmp_path):
    on = run_in_process([*FAST, "token_cache=true"], tmp_path / "on")
    off = run_in_process([*FAST, "token_cache=false"], tmp_path / "off")
    assert on["results"] == off["results"]
