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

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metarun.data.dataset import Example, FewShotDataset
from metarun.files import atomic_write

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
    h.update(
        json.dumps([type(tokenizer).__name__, tokenizer.padding_side, tokenizer.pad_token_id, max_length]).encode()
    )
    for key in keys:
        h.update(json.dumps(key).encode() + b"\n")
    return h.hexdigest()


class PretokenizedTokenizer:
    """`examples -> dict of (B, L) tensors`, like the wrapped TextTokenizer, from stored ids: each
    sentence's ids (and segment ids, for pairs) as an int32 array; the attention mask is its length."""

    def __init__(self, tokenize, rows: dict, columns: tuple[str, ...]):
        self.tokenize, self.rows, self.columns = tokenize, rows, columns
        self.max_length, self.entity_markers = tokenize.max_length, tokenize.entity_markers
        self.tokenizer = tokenize.tokenizer
        self.pad_id = tokenize.tokenizer.pad_token_id or 0

    def identity(self) -> dict:
        return self.tokenize.identity()  # the same output as the tokenizer it stands in for

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
        out = {
            "input_ids": ids,
            "token_type_ids": segments,
            "attention_mask": (torch.arange(width) < torch.tensor(lengths)[:, None]).long(),
        }
        return {c: out[c] for c in self.columns}


def _rows(table, column: str) -> list[np.ndarray]:
    """One list column of the Arrow table as int32 views, one per row (no per-row Python objects)."""
    arr = table.data.column(column).combine_chunks()
    offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy().astype(np.int32)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


def content_digest(fp: str, tokens) -> str:
    """Digest of a token table: its fingerprint (the key), then every column's row lengths and ids."""
    h = hashlib.blake2b(fp.encode(), digest_size=20)
    for column in sorted(tokens.column_names):
        arr = tokens.data.column(column).combine_chunks()
        offsets = arr.offsets.to_numpy().astype(np.int64)
        h.update(f"{column}:{len(arr)}".encode())
        h.update((offsets - offsets[0]).tobytes())
        h.update(arr.values.to_numpy().astype(np.int64)[offsets[0] : offsets[-1]].tobytes())
    return h.hexdigest()


def _verified(cache_file: Path, digest_file: Path, fp: str, rows: int):
    """The stored token table if it is there and intact (the digest written with it matches its key
    and contents), else None. A damaged or altered entry is reported, removed and made again."""
    import datasets

    if not cache_file.is_file():
        return None
    try:
        tokens = datasets.Dataset.from_file(str(cache_file))
        if len(tokens) != rows:
            raise ValueError(f"holds {len(tokens)} rows, not {rows}")
        try:
            stored = json.loads(digest_file.read_text())
        except FileNotFoundError:
            raise ValueError(f"has no digest file {digest_file.name} (a write was cut short)") from None
        if (
            not isinstance(stored, dict)
            or stored.get("key") != fp
            or stored.get("digest") != content_digest(fp, tokens)
        ):
            raise ValueError("its contents do not match the digest written with them")
        return tokens
    except Exception as e:  # damaged, altered or foreign: never used
        log.warning(
            "token cache: %s is unusable (%s: %s); tokenising again",
            cache_file,
            type(e).__name__,
            str(e).splitlines()[0][:200] if str(e) else "",
        )
        for f in (cache_file, digest_file):
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)
        return None


def _cache_folder(cache_dir: str | Path | None) -> Path | None:
    """The token cache's folder, or None (with a warning) when it cannot be made or written."""
    import datasets

    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser() / "metarun_tokens"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as e:
        log.warning(
            "token cache: cannot use %s (%s); tokenising without the cache (set HF_DATASETS_CACHE to a "
            "writable folder, or token_cache=false)",
            folder,
            e.strerror or e,
        )
        return None
    return folder


def pretokenized(tokenize, parts: Sequence[FewShotDataset], cache_dir: str | Path | None = None):
    """`tokenize` backed by one stored tokenisation of every sentence in `parts` (or `tokenize`
    itself where that does not apply: entity markers, non-HF tokenizers, no sentences, or a cache
    folder that cannot be used)."""
    if not parts:
        return tokenize
    import datasets

    datasets.disable_progress_bars()  # about a second of work: no bar
    tokenizer = getattr(tokenize, "tokenizer", None)
    if (
        getattr(tokenize, "entity_markers", True)
        or tokenizer is None
        or not getattr(tokenizer, "is_fast", False)
        or tokenizer.padding_side != "right"
    ):
        return tokenize
    keys = list(dict.fromkeys((e.text, e.text_pair) for part in parts for e in part.examples))
    if not keys:
        return tokenize
    pairs = all(k[1] is not None for k in keys)
    if not pairs and any(k[1] is not None for k in keys):
        return tokenize  # mixed: the tokenizer's own error says what is wrong when such a batch comes
    folder = _cache_folder(cache_dir)
    if folder is None:
        return tokenize
    fp = fingerprint(tokenizer, tokenize.max_length, keys)
    cache_file, digest_file = folder / f"{fp}.arrow", folder / f"{fp}.digest.json"
    tokens = _verified(cache_file, digest_file, fp, len(keys))
    hit = tokens is not None
    if not hit:

        def encode(batch):
            return tokenizer(
                batch["text"], batch["text_pair"] if pairs else None, truncation=True, max_length=tokenize.max_length
            )

        table = datasets.Dataset.from_dict({"text": [k[0] for k in keys], "text_pair": [k[1] for k in keys]})
        try:
            tokens = table.map(
                encode,
                batched=True,
                batch_size=1000,
                remove_columns=["text", "text_pair"],
                cache_file_name=str(cache_file),
                new_fingerprint=fp,
                load_from_cache_file=False,
                desc="tokenising",
            )
            digest = {"key": fp, "digest": content_digest(fp, tokens)}
            atomic_write(digest_file, lambda f: f.write(json.dumps(digest).encode()))
        except OSError as e:  # a full or read-only disk costs the cache, never the run
            log.warning(
                "token cache: could not write %s (%s); tokenising without the cache", cache_file, e.strerror or e
            )
            for f in (cache_file, digest_file):
                with contextlib.suppress(OSError):
                    f.unlink(missing_ok=True)
            return tokenize
    columns = tuple(c for c in COLUMNS if c in tokens.column_names)
    ids = _rows(tokens, "input_ids")
    segments = _rows(tokens, "token_type_ids") if pairs and "token_type_ids" in columns else [None] * len(keys)
    rows = dict(zip(keys, zip(ids, segments)))
    log.info(
        "tokens of %d sentences %s (%s)",
        len(keys),
        "read from the cache" if hit else "tokenised once and cached",
        cache_file,
    )
    return PretokenizedTokenizer(tokenize, rows, columns)
