"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query's class distribution is an attention-weighted vote of the support labels:
P(y = c | q) = sum_i a(q, s_i) [y_i = c], with a = softmax over the support set of scaled cosine
similarities. The loss is the negative log-likelihood of the query labels. Full context embeddings
(LSTMs over the support set) are not included: with a pretrained transformer encoder each
embedding already reads its whole sentence, and FewRel's published Matching baseline uses the CNN
encoder without them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import check_number
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, with_nota
from metarun.learners.functional import cosine_similarity


class MatchingNet(FeatureLearner):

    def __init__(self, encoder: nn.Module, scale: float = 10.0, learn_scale: bool = True, nota: bool = False):
        super().__init__()
        self.nota = nota
        self.nota_offset = nn.Parameter(torch.zeros(())) if nota else None
        check_number("learner.scale", scale, 0, low_open=True)
        self.encoder = encoder
        log_scale = torch.tensor(float(scale)).log()
        self.log_scale = nn.Parameter(log_scale, requires_grad=learn_scale)

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) log-probabilities (N+1 logits with `nota`)."""
        attention = torch.softmax(self.log_scale.exp() * cosine_similarity(query.float(), support.float()), dim=-1)
        probs = attention @ F.one_hot(support_labels, n_way).to(attention.dtype)  # (N*Q, N*K) @ (N*K, N)
        log_probs = probs.clamp_min(1e-12).log()
        return torch.log_softmax(with_nota(log_probs, self.nota_offset), -1) if self.nota else log_probs

    def training_loss(self, episode: Episode) -> StepOutput:
        support, query = self.embed_episode(episode)
        log_probs = self.predict_from_features(support, episode.support_labels, query, episode.n_way)
        loss = F.nll_loss(log_probs, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(log_probs.detach(), episode.query_labels)}, (support, query))
