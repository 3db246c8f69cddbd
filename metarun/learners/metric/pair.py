"""BERT-PAIR (Gao, Han, Zhu, Liu, Li, Sun & Zhou, EMNLP 2019, the FewRel 2.0 baseline).

Every (support instance, query) pair is one sequence "[CLS] support [SEP] query [SEP]" (token types
0 and 1) that a transformer with a 2-way classifier on the [CLS] state scores as "same relation" or
"different". A query's logit for class c is the mean "same" score over c's K support instances,
and training is cross-entropy over the N classes. An episode costs N*K*M transformer passes over
pairs (M queries), against N*K + M for ProtoNet: BERT-PAIR is the slowest learner here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError
from metarun.learners.base import Learner, StepOutput, accuracy, encoder_and_rest
from metarun.models.base import Encoder


def pair_batch(support: dict[str, torch.Tensor], query: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tokenised support (S, Ls) and query (M, Lq) sentences -> (M*S, L) pairs, query-major:
    row m*S + s is [CLS] support_s [SEP] query_m [SEP] (the query's own [CLS] dropped), padded right."""
    s_len, q_len = support["attention_mask"].sum(1).tolist(), query["attention_mask"].sum(1).tolist()
    device = support["input_ids"].device
    rows, firsts = [], []  # each pair's tokens, and how many of them are the support sentence's (type 0)
    for m, lq in enumerate(q_len):
        q_ids = query["input_ids"][m, 1:lq]
        for s, ls in enumerate(s_len):
            rows.append(torch.cat([support["input_ids"][s, :ls], q_ids]))
            firsts.append(ls)
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    # type 1 from the query's first token on, within the real tokens; built on the device in one step
    token_types = (torch.arange(length, device=device) >= torch.tensor(firsts, device=device)[:, None]).long() * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}


class PairNet(Learner):

    def __init__(self, encoder: Encoder, head_lr: float | None = 1e-3, pair_batch_size: int = 256,
                 nota: bool = False):
        super().__init__()
        self.nota = nota
        if not encoder.transformer:
            raise ConfigError(f"learner=pair scores sentence pairs with a transformer; use a transformer encoder "
                              f"(encoder=minilm or encoder=minilm_markers), not encoder={encoder.name}.")
        self.encoder, self.head_lr, self.pair_batch_size = encoder, head_lr, pair_batch_size
        self.classifier = nn.Linear(encoder.hidden_size, 2)  # (different, same)

    def param_groups(self, lr: float) -> list[dict]:
        return encoder_and_rest(self, lr, self.head_lr or lr)

    def pair_scores(self, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(P, L) pairs -> (P, 2) scores, in chunks of `pair_batch_size` pairs."""
        out = []
        for start in range(0, len(pairs["input_ids"]), self.pair_batch_size):
            chunk = {k: v[start : start + self.pair_batch_size] for k, v in pairs.items()}
            cls = self.encoder.backbone(**chunk).last_hidden_state[:, 0]  # (P, H)
            out.append(self.classifier(cls))
        return torch.cat(out)

    def predict(self, episode: Episode) -> torch.Tensor:
        """(M, N) logits: each class's mean "same" score over its K support instances. With `nota`,
        (M, N+1): the NOTA logit is the smallest class-mean "different" score (Gao et al.'s rule)."""
        n_support, n_query = len(episode.support_labels), len(episode.query_labels)
        scores = self.pair_scores(pair_batch(episode.support, episode.query)).float()  # (M*S, 2)
        one_hot = F.one_hot(episode.support_labels, episode.n_way).to(scores.dtype)  # (S, N)
        mean = lambda col: scores[:, col].view(n_query, n_support) @ one_hot / one_hot.sum(0)  # noqa: E731  (M, N)
        same = mean(1)
        return torch.cat([same, mean(0).min(-1, keepdim=True).values], -1) if self.nota else same

    def training_loss(self, episode: Episode) -> StepOutput:
        logits = self.predict(episode)
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})
