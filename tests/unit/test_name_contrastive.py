"""objective=names: each query against its episode's class-name embeddings."""

import math

import pytest
import torch

from conftest import attached, text_episode, tiny_encoder
from metarun.learners.functional import name_contrastive
from metarun.learners.objectives import NameContrastive
from metarun.learners.refiners import embed_names
from metarun.learners.metric.protonet import ProtoNet


def test_name_contrastive_equals_a_hand_computation():
    """Cosines (1, 0) and (0, 1) over t = 0.5: logits (2, 0) for the first query, (0, 2) for the
    second (their lengths do not count); each loss log(1 + e^-2)."""
    query = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    names = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    loss = name_contrastive(query, names, torch.tensor([0, 1]), 0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    swapped = name_contrastive(query, names, torch.tensor([1, 0]), 0.5)  # each query against the other name
    assert swapped.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)


def test_protonet_adds_the_name_term_and_reads_names():
    enc = tiny_encoder()
    ep = text_episode(enc)
    ep.meta["classes"] = ["card_arrival", "top_up", "atm_fee"]
    plain, learner = ProtoNet(enc), attached(ProtoNet(enc), NameContrastive(0.5))
    assert learner.uses_class_names and not plain.uses_class_names  # its runs are of the "names" regime
    enc.eval()  # no dropout: equal ProtoNet losses
    out = learner.training_step([ep])
    _, query = learner.embed_episode(ep)
    names = embed_names(learner, ep.meta["classes"])
    alone = name_contrastive(query, names, ep.query_labels, learner.objectives[0].temperature)
    assert out.metrics["names"] == pytest.approx(alone.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(plain.training_loss(ep).loss.item() + 0.5 * alone.item(), rel=1e-5)
    out.loss.backward()
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
