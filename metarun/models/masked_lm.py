"""Masked-language-model steps on the training utterances (task-adaptive pre-training, interleaved with
meta-training: `objective=mlm`), the further pre-training of the encoder that the published
few-shot intent baselines (ProtoNet / ProtAugment on BERT further pre-trained on each dataset's
utterances; Dopierre et al. 2021) start from.

`mask_tokens` is BERT's recipe (Devlin et al. 2019): `probability` of the real tokens are chosen; of
those, 80% become [MASK], 10% a random token, 10% stay; the loss is the cross-entropy of the chosen
tokens only. `MaskedLMHead` is BERT's head: dense + GELU + LayerNorm, then logits through the input
token embeddings (tied) plus a bias. Sentence-transformers checkpoints carry no MLM head, so its
transform starts as the identity map (then GELU and LayerNorm), which scores each state against the
token embeddings from the first step; the decoder is the encoder's own embedding table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # cross-entropy's ignore_index: tokens that were not chosen


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int], mask_id: int,
                vocab_size: int, probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels): labels hold the original id of each chosen token, IGNORE elsewhere.
    Padding and special tokens ([CLS], [SEP], markers) are never chosen. Uses the global torch RNG."""
    real = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))
    chosen = real & (torch.rand(input_ids.shape, device=input_ids.device) < probability)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, device=input_ids.device)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=input_ids.device)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, labels


class MaskedLMHead(nn.Module):
    """BERT's masked-language-model head on a transformer encoder (`TransformerEncoder`)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        cfg = encoder.model.config
        self.transform = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.GELU(),
                                       nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps))
        nn.init.eye_(self.transform[0].weight)
        nn.init.zeros_(self.transform[0].bias)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self._encoder = [encoder]  # in a list: the encoder stays registered once, under the learner
        tok = encoder.hf_tokenizer
        self.special_ids, self.mask_id, self.vocab_size = list(tok.all_special_ids), tok.mask_token_id, cfg.vocab_size

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """(M, H) hidden states -> (M, V) logits through the tied input embeddings."""
        table = self._encoder[0].model.get_input_embeddings().weight
        return self.transform(states) @ table.T + self.bias

    def loss(self, batches: list[dict[str, torch.Tensor]], probability: float) -> torch.Tensor:
        """The mean cross-entropy of the chosen tokens of every tokenised batch (e.g. support and query)."""
        encoder, total, count = self._encoder[0], 0.0, 0
        for batch in batches:
            masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.special_ids, self.mask_id,
                                         self.vocab_size, probability)
            states = encoder.hidden_states({**batch, "input_ids": masked})
            chosen = labels != IGNORE
            if chosen.any():
                total = total + F.cross_entropy(self.logits(states[chosen]).float(), labels[chosen], reduction="sum")
                count += int(chosen.sum())
        return total / count if count else self.bias.sum() * 0.0  # no token chosen: a zero loss in the graph
