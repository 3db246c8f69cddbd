"""SNAIL: A Simple Neural Attentive Meta-Learner (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018).

An episode is a sequence: the N*K support items (features concatenated with their one-hot label)
followed by a query (features and zeros); dense blocks of causal temporal convolutions (kernel 2,
dilations 1, 2, 4, ...) and causal attention blocks read it, and the prediction is read at the query's
position. The paper's architecture: attention(64, 32), TC(128), attention(256, 128), TC(128),
attention(512, 256), then a linear layer to the label slots.

Batched queries: the FewRel toolkit copies the support set once per query and runs each sequence on
its own. Here every query of an episode goes through in one pass, and exactly as if it were alone
after the support set: the support sequence is computed once (causal, so it never depends on what
follows), and each query sits at position N*K, where a convolution's earlier tap reads the support
item d positions back and attention reads the support items and the query itself, never another
query. `causal: false` lets support items attend to every support item (permutation-invariant
attention over the support set; the convolutions stay ordered).

Labels enter as one-hot vectors over `max_way` slots. During training each episode's classes take
a random subset of the slots, so every slot learns and an evaluation may use up to `max_way` classes
(FewRel's 10-way) after 5-way training. The support order is shuffled in training; evaluation uses
a fixed order that interleaves the classes (shot 1 of every class, then shot 2, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice, check_int
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, encoder_and_rest
from metarun.learners.functional import FEATURE_NORMS, interleaved_order, normalize_episode, random_presentation


class DenseBlock(nn.Module):
    """Causal convolution (kernel 2, `dilation`) with a gated activation, concatenated to its input."""

    def __init__(self, channels: int, filters: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.prev, self.cur = nn.Linear(channels, 2 * filters, bias=False), nn.Linear(channels, 2 * filters)

    def gated(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        f, g = (self.prev(prev) + self.cur(cur)).chunk(2, -1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, s: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, C) support sequence, (M, C) queries at position L -> (L, C + F), (M, C + F)."""
        d, length = self.dilation, len(s)
        s_prev = F.pad(s, (0, 0, d, 0))[:length]  # x[t - d], zeros before the start
        q_prev = (s[length - d] if length >= d else s.new_zeros(s.shape[-1])).expand_as(q)
        return torch.cat([s, self.gated(s_prev, s)], -1), torch.cat([q, self.gated(q_prev, q)], -1)


class AttentionBlock(nn.Module):
    """Single-head attention (keys and queries of `key_size`, values of `value_size`), concatenated."""

    def __init__(self, channels: int, key_size: int, value_size: int, causal: bool):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(channels, key_size), nn.Linear(channels, key_size),
                                            nn.Linear(channels, value_size))
        self.scale, self.causal = 1 / math.sqrt(key_size), causal

    def forward(self, s: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = self.key(s), self.value(s)
        logits = self.query(s) @ ks.T * self.scale  # (L, L)
        if self.causal:
            future = torch.ones_like(logits, dtype=torch.bool).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        read_s = logits.softmax(-1) @ vs
        qq = self.query(q)
        # each query attends to the support items and to itself: [L logits | its own]
        q_logits = torch.cat([qq @ ks.T, (qq * self.key(q)).sum(-1, keepdim=True)], -1) * self.scale
        probs = q_logits.softmax(-1)
        read_q = probs[:, :-1] @ vs + probs[:, -1:] * self.value(q)
        return torch.cat([s, read_s], -1), torch.cat([q, read_q], -1)


class SNAIL(FeatureLearner):

    def __init__(self, encoder: nn.Module, max_way: int = 10, max_shot: int = 5, filters: int = 128,
                 attention: list[list[int]] | tuple = ((64, 32), (256, 128), (512, 256)), causal: bool = True,
                 feature_norm: str = "center_l2", head_lr: float | None = 1e-3):
        super().__init__()
        check_choice("learner.feature_norm", feature_norm, FEATURE_NORMS)
        self.feature_norm = feature_norm
        for opt, v in (("max_way", max_way), ("max_shot", max_shot), ("filters", filters)):
            check_int(f"learner.{opt}", v)
        if len(attention) != 3 or any(len(a) != 2 or min(a) < 1 for a in attention):
            raise ConfigError(f"learner.attention must be three [key_size, value_size] pairs (the paper's "
                              f"[[64, 32], [256, 128], [512, 256]]), got {attention!r}.")
        self.encoder, self.max_way, self.max_shot, self.head_lr = encoder, max_way, max_shot, head_lr
        # TC block: dilations 1, 2, ..., 2^(n-1) with n = ceil(log2 T), T = max_way * max_shot items + the
        # query, so the receptive field 2^n just covers T. (The paper lists 2^1 ... 2^n, whose last
        # layer's earlier tap would only ever read the zero padding before the sequence.)
        n_dense = math.ceil(math.log2(max_way * max_shot + 1))
        blocks, c = [], encoder.out_dim + max_way
        for i, (key, value) in enumerate(attention):
            blocks.append(AttentionBlock(c, key, value, causal))
            c += value
            if i < 2:
                for j in range(n_dense):
                    blocks.append(DenseBlock(c, filters, 2 ** j))
                    c += filters
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(c, max_way)

    def param_groups(self, lr: float) -> list[dict]:
        return encoder_and_rest(self, lr, self.head_lr or lr)

    def _check(self, n_way: int, n_support: int) -> None:
        if n_way > self.max_way:
            raise ConfigError(f"learner=snail reads labels as one-hot vectors over learner.max_way={self.max_way} "
                              f"slots, but this episode is {n_way}-way; set learner.max_way >= {n_way}.")
        if n_support > self.max_way * self.max_shot:
            raise ConfigError(f"learner=snail's convolutions span learner.max_way x learner.max_shot = "
                              f"{self.max_way * self.max_shot} support items, but this episode has {n_support}; "
                              f"raise learner.max_shot.")

    def sequence_logits(self, support, support_labels, query, slots: torch.Tensor) -> torch.Tensor:
        """Support items in sequence order, (M, D) queries, each class's label slot -> (M, N) logits."""
        dtype = self.out.weight.dtype
        support, query = normalize_episode(support, query, self.feature_norm)
        s = torch.cat([support.to(dtype), F.one_hot(slots[support_labels], self.max_way).to(dtype)], -1)
        q = torch.cat([query.to(dtype), query.new_zeros(len(query), self.max_way, dtype=dtype)], -1)
        for block in self.blocks:
            s, q = block(s, q)
        return self.out(q)[:, slots].float()

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        self._check(n_way, len(support_labels))
        order = interleaved_order(support_labels, n_way)  # episodes list the support set by class
        slots = torch.arange(n_way, device=support_labels.device)
        return self.sequence_logits(support[order], support_labels[order], query, slots)

    def training_loss(self, episode: Episode) -> StepOutput:
        s, q = self.embed_episode(episode)
        n = episode.n_way
        self._check(n, len(s))
        order, slots = random_presentation(len(s), n, self.max_way, s.device)
        logits = self.sequence_logits(s[order], episode.support_labels[order], q, slots)
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})

