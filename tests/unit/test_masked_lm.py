"""Masked-language-model steps on the training utterances (metarun/models/masked_lm.py, objective=mlm)."""

import pytest
import torch
from conftest import FeatureEncoder, attached, text_episode, tiny_encoder

from metarun.errors import ConfigError
from metarun.learners.metric.protonet import ProtoNet
from metarun.learners.objectives import MaskedLM
from metarun.models.masked_lm import IGNORE, MaskedLMHead, mask_tokens


def test_mask_tokens_follows_berts_recipe():
    torch.manual_seed(0)
    ids = torch.randint(200, 1000, (400, 500))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS], [SEP]
    mask = torch.ones_like(ids)
    mask[:, 400:] = 0  # padding
    masked, labels = mask_tokens(ids, mask, [0, 101, 102], mask_id=103, vocab_size=1000, probability=0.15)
    chosen = labels != IGNORE
    real = mask.bool() & (ids != 101) & (ids != 102)
    assert not (chosen & ~real).any() and torch.equal(labels[chosen], ids[chosen])
    assert chosen.sum() / real.sum() == pytest.approx(0.15, abs=0.005)
    as_mask = (masked == 103) & chosen
    kept = (masked == ids) & chosen
    assert as_mask.sum() / chosen.sum() == pytest.approx(0.8, abs=0.01)
    assert kept.sum() / chosen.sum() == pytest.approx(0.1 + 0.1 * 1 / 1000, abs=0.01)  # a random id may equal it
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_the_head_is_tied_and_its_loss_trains_the_encoder():
    enc = tiny_encoder()
    head = MaskedLMHead(enc)
    states = torch.randn(7, enc.model.config.hidden_size)
    table = enc.model.get_input_embeddings().weight
    torch.testing.assert_close(head.logits(states), head.transform(states) @ table.T + head.bias)
    assert torch.equal(head.transform[0].weight, torch.eye(states.shape[1]))  # starts as the identity map
    assert not {id(p) for p in head.parameters()} & {id(p) for p in enc.parameters()}  # registered once
    ep = text_episode(enc)
    torch.manual_seed(0)
    loss = head.loss([ep.support, ep.query], probability=0.5)
    loss.backward()
    assert loss > 0 and table.grad.abs().sum() > 0 and head.transform[0].weight.grad.abs().sum() > 0
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_protonet_adds_the_mlm_loss_with_its_weight():
    enc = tiny_encoder()
    ep = text_episode(enc)
    plain, mlm = ProtoNet(enc), attached(ProtoNet(enc), MaskedLM(0.5))
    head = mlm.objectives[0].head
    assert not plain.trains_on_text and mlm.trains_on_text  # the MLM steps read the tokens
    enc.eval()  # no dropout: the proto losses of the two learners are equal
    torch.manual_seed(3)
    out = mlm.training_step([ep])
    torch.manual_seed(3)
    alone = head.loss([ep.support, ep.query], 0.15)
    proto = plain.training_loss(ep).loss
    assert out.metrics["mlm"] == pytest.approx(alone.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(proto.item() + 0.5 * alone.item(), rel=1e-5)
    groups = mlm.optimizer_groups(2e-5)
    assert groups[-1]["lr"] == 1e-3 and len(groups[-1]["params"]) == len(list(head.parameters()))
    assert sum(len(g["params"]) for g in groups) == len([p for p in mlm.parameters() if p.requires_grad])


def test_mlm_options_are_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="need a transformer encoder"):
        attached(ProtoNet(FeatureEncoder(4, 3)), MaskedLM(0.5))
    frozen = tiny_encoder().requires_grad_(False)
    with pytest.raises(ConfigError, match=r"the encoder is frozen \(encoder.freeze=true\)"):
        attached(ProtoNet(frozen), MaskedLM(0.5))
    with pytest.raises(ConfigError, match="objective.mlm.probability=1.5 is not valid"):
        MaskedLM(0.5, probability=1.5)
    with pytest.raises(ConfigError, match="objective.mlm.weight=0 is not valid"):
        MaskedLM(0)
