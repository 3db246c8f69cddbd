"""Tokenisation once per (sentences, tokenizer, max_length), cached by Hugging Face `datasets`.

`pretokenized(tokenize, datasets)` tokenises every sentence of a run's data with `Dataset.map` into
an Arrow file named by a fingerprint of the sentences, the tokenizer (its full serialised vocabulary
and rules) and max_length, in `datasets`' cache folder. A later run with the same fingerprint (every
job of a sweep over seeds or learners) loads that file instead of tokenising again. The returned
`PretokenizedTokenizer` is a drop-in `encoder.tokenize`: a batch of known sentences is padded from
the stored ids, giving the tensors the tokenizer itself gives (a test checks they are equal); any
other sentence goes to the tokenizer.

Only plain sentences (and sentence pairs) of Hugging Face tokenizers are pre-tokenised; relation
instances with entity markers and the CNN's word tokenizer keep tokenising per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metarun.data.dataset import Example, FewShotDataset

log = logging.getLogger("metarun")

COLUMNS = ("input_ids", "token_type_ids", "attention_mask")


def fingerprint(tokenizer, max_length: int, keys: Sequence[tuple[str, str | None]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # its rules and vocabulary; not the truncation / padding state a last call left
        rules = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        h.update(json.dumps(rules, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([type(tokenizer).__name__, tokenizer.padding_side, tokenizer.pad_token_id, max_length]).encode())
    for key in keys:
        h.update(json.dumps(key).encode() + b"\n")
    return h.hexdigest()


class PretokenizedTokenizer:
    """`examples -> dict of (B, L) tensors`, like the wrapped TextTokenizer, from stored ids: each
    sentence's ids (and segment ids, for pairs) as an int32 array; the attention mask is its length."""

    def __init__(self, tokenize, rows: dict, columns: tuple[str, ...]):
        self.tokenize, self.rows, self.columns = tokenize, rows, columns
        self.max_length, self.entity_markers = tokenize.max_length, tokenize.entity_markers  # for feature-cache keys
        self.tokenizer = tokenize.tokenizer
        self.pad_id = tokenize.tokenizer.pad_token_id or 0

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        found = [self.rows.get((e.text, e.text_pair)) for e in examples]
        if not examples or any(r is None for r in found):
            return self.tokenize(examples)
        lengths = [len(ids) for ids, _ in found]
        width = max(lengths)
        ids = torch.full((len(found), width), self.pad_id, dtype=torch.long)
        segments = torch.zeros((len(found), width), dtype=torch.long)
        for i, (row_ids, row_segments) in enumerate(found):
            ids[i, : lengths[i]] = torch.from_numpy(row_ids)
            if row_segments is not None:
                segments[i, : lengths[i]] = torch.from_numpy(row_segments)
        out = {"input_ids": ids, "token_type_ids": segments,
               "attention_mask": (torch.arange(width) < torch.tensor(lengths)[:, None]).long()}
        return {c: out[c] for c in self.columns}


def _rows(table, column: str) -> list[np.ndarray]:
    """One list column of the Arrow table as int32 views, one per row (no per-row Python objects)."""
    arr = table.data.column(column).combine_chunks()
    offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy().astype(np.int32)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


def pretokenized(tokenize, parts: Sequence[FewShotDataset], cache_dir: str | Path | None = None):
    """`tokenize` backed by one stored tokenisation of every sentence in `parts` (or `tokenize`
    itself where that does not apply: entity markers, non-HF tokenizers, no sentences)."""
    import datasets

    datasets.disable_progress_bars()  # about a second of work: no bar
    tokenizer = getattr(tokenize, "tokenizer", None)
    if getattr(tokenize, "entity_markers", True) or tokenizer is None or not getattr(tokenizer, "is_fast", False) \
            or tokenizer.padding_side != "right":
        return tokenize
    keys = list(dict.fromkeys((e.text, e.text_pair) for part in parts for e in part.examples))
    if not keys:
        return tokenize
    fp = fingerprint(tokenizer, tokenize.max_length, keys)
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "metarun_tokens"
    folder.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict({"text": [k[0] for k in keys], "text_pair": [k[1] for k in keys]})
    pairs = all(k[1] is not None for k in keys)
    if not pairs and any(k[1] is not None for k in keys):
        return tokenize  # mixed: the tokenizer's own error says what is wrong when such a batch comes

    def encode(batch):
        return tokenizer(batch["text"], batch["text_pair"] if pairs else None, truncation=True,
                         max_length=tokenize.max_length)

    cache_file = folder / f"{fp}.arrow"
    hit = cache_file.is_file()
    tokens = table.map(encode, batched=True, batch_size=1000, remove_columns=["text", "text_pair"],
                       cache_file_name=str(cache_file), new_fingerprint=fp, load_from_cache_file=True,
                       desc="tokenising")
    columns = tuple(c for c in COLUMNS if c in tokens.column_names)
    ids = _rows(tokens, "input_ids")
    segments = _rows(tokens, "token_type_ids") if pairs and "token_type_ids" in columns else [None] * len(keys)
    rows = dict(zip(keys, zip(ids, segments)))
    log.info("tokens of %d sentences %s (%s)", len(keys), "read from the cache" if hit else "tokenised once and cached",
             cache_file)
    return PretokenizedTokenizer(tokenize, rows, columns)
