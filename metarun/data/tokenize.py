"""Text into token ids: `TextTokenizer` pads a batch of examples for a Hugging Face tokenizer, with
entity markers around the head and tail of relation instances ([E1] ... [/E1], [E2] ... [/E2]) and
their first positions for entity-start pooling. Encoders own one (models/encoders.py); the token
cache (data/tokenized.py) stands in for it with stored ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from metarun.data.dataset import Example
from metarun.errors import ConfigError

MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")


class TextTokenizer:
    """Picklable tokenise-and-pad callable for DataLoader workers: examples -> dict of (B, L) tensors."""

    def __init__(self, tokenizer, max_length: int, entity_markers: bool):
        # Hugging Face's Rust tokenisers warn and may deadlock when a process that used them forks
        # DataLoader workers; these run inside the workers, so the parallelism stays off
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.tokenizer, self.max_length, self.entity_markers = tokenizer, max_length, entity_markers
        if entity_markers:
            self.marker_ids = tokenizer.convert_tokens_to_ids(list(MARKERS))

    def identity(self) -> dict:
        """The settings that decide its output for a given vocabulary (feature-cache keys)."""
        return {"max_length": self.max_length, "markers": self.entity_markers, "vocab": len(self.tokenizer)}

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not self.entity_markers:
            pairs = [e.text_pair for e in examples]
            if any(p is not None for p in pairs) and not all(p is not None for p in pairs):
                raise ConfigError("some examples have a second text (data.text_pair_column) and some do not; "
                                  "give every row both texts.")
            return dict(self.tokenizer(
                [e.text for e in examples], pairs if pairs and pairs[0] is not None else None, padding=True,
                truncation=True, max_length=self.max_length, return_tensors="pt",
            ))
        batch = dict(self.tokenizer(
            [self._marked(e) for e in examples], is_split_into_words=True, padding=True,
            truncation=True, max_length=self.max_length, return_tensors="pt",
        ))
        ids = batch["input_ids"]
        batch["head_pos"] = first_position(ids, self.marker_ids[0])
        batch["tail_pos"] = first_position(ids, self.marker_ids[2])
        return batch

    @staticmethod
    def _marked(e: Example) -> list[str]:
        if e.tokens is None or e.head is None or e.tail is None:
            raise ConfigError(
                "entity markers need relation instances (tokens with head and tail spans), but the "
                "data has plain sentences; set encoder.entity_markers=false and encoder.pooling=mean."
            )
        out = []
        for i, tok in enumerate(e.tokens):
            out += [m for pos, m in ((e.head[0], "[E1]"), (e.tail[0], "[E2]")) if pos == i]
            out.append(tok)
            out += [m for pos, m in ((e.head[1], "[/E1]"), (e.tail[1], "[/E2]")) if pos == i]
        return out


def first_position(ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B, L) -> (B,) position of the first `token_id`, or 0 ([CLS]) when truncation removed it."""
    hit = ids == token_id
    return torch.where(hit.any(1), hit.float().argmax(1), torch.zeros(len(ids), dtype=torch.long))
