import torch
from torch import nn

from metarun.learners.functional import prototypes
from metarun.learners.protonet import ProtoNet


class Identity(nn.Module):
    def forward(self, x):
        return x


def test_logits_match_hand_computation():
    # 2-way 2-shot in 2-D: prototypes (1, 0) and (0, 3)
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    p = ProtoNet(Identity())
    logits = p.predict_from_features(support, labels, query, 2)
    # q0: |(0,1)|^2 = 1, |(1,-2)|^2 = 5 ; q1: |(-1,3)|^2 = 10, 0
    assert torch.allclose(logits, -torch.tensor([[1.0, 5.0], [10.0, 0.0]]))
    cos = ProtoNet(Identity(), distance="cosine", scale=10.0).predict_from_features(support, labels, query, 2)
    expected = 10 * torch.tensor([[1 / 2**0.5, 3 / (3 * 2**0.5)], [0.0, 1.0]])
    assert torch.allclose(cos, expected, atol=1e-6)


def test_prototypes_are_class_means_for_any_order():
    feats = torch.randn(6, 3)
    labels = torch.tensor([1, 0, 2, 0, 1, 2])
    protos = prototypes(feats, labels, 3)
    for c in range(3):
        assert torch.allclose(protos[c], feats[labels == c].mean(0))


def test_gradient_reaches_encoder_and_learned_scale():
    enc = nn.Linear(4, 3)
    enc_call = lambda x: enc(x)  # noqa: E731
    p = ProtoNet(nn.Module(), learn_scale=True)
    p.encoder = enc
    p.embed = enc_call
    from metarun.data.collate import Episode

    ep = Episode(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(3, 4), torch.tensor([0, 1, 2]), 3)
    out = p.training_loss(ep)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in [enc.weight, p.log_scale])
