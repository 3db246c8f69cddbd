import pytest
import torch
from torch import nn

from conftest import attached, tiny_protonet
from metarun.learners.functional import prototypes
from metarun.learners.metric.protonet import ProtoNet
from metarun.learners.objectives import InstanceContrastive, SupervisedContrastive
from metarun.learners.refiners import EpisodeContext, NamePrior, Rectify, SoftKMeans, name_text


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


# -- transductive prototypes (soft k-means, Ren et al. 2018) ---------------------------------------

def test_soft_kmeans_without_queries_is_plain():
    """Soft kmeans with no queries or no steps gives the support prototypes."""
    from metarun.learners.functional import prototypes, soft_kmeans_prototypes

    torch.manual_seed(0)
    s, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    score = lambda q, p: -torch.cdist(q, p) ** 2  # noqa: E731
    plain = prototypes(s, y, 3)
    assert torch.allclose(soft_kmeans_prototypes(s, y, torch.zeros(0, 4), 3, 1, score), plain)
    assert torch.allclose(soft_kmeans_prototypes(s, y, torch.randn(5, 4), 3, 0, score), plain)


def test_one_soft_kmeans_step_is_a_weighted_mean():
    """One soft kmeans step is the weighted mean of support and queries."""
    from metarun.learners.functional import soft_kmeans_prototypes

    torch.manual_seed(0)
    s, y, q = torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(3, 3)
    score = lambda q, p: -torch.cdist(q, p) ** 2  # noqa: E731
    p0 = torch.stack([s[:2].mean(0), s[2:].mean(0)])
    w = score(q, p0).softmax(-1)
    expected = torch.stack([(s[y == c].sum(0) + (w[:, c:c + 1] * q).sum(0)) / (2 + w[:, c].sum()) for c in range(2)])
    assert torch.allclose(soft_kmeans_prototypes(s, y, q, 2, 1, score), expected, atol=1e-6)


# -- class names as a prototype prior (refiner=[name_prior]) --------------------------------------

def test_a_label_prior_of_weight_zero_is_plain_protonet():
    torch.manual_seed(0)
    s, y, q = torch.randn(6, 32), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(4, 32)
    plain = tiny_protonet()
    prior = tiny_protonet(prior={"weight": 0.0})
    with torch.no_grad():
        assert torch.allclose(prior.predict_from_features(s, y, q, 3, EpisodeContext(["card_arrival", "pin", "atm"])),
                              plain.predict_from_features(s, y, q, 3))


def test_the_label_prior_is_a_weighted_mean():
    """The label prior is the weighted mean of support and name and very large weights are zero shot."""
    from metarun.data.dataset import Example

    assert name_text("card_arrival.v2", "This is about {name}") == "This is about card arrival v2"
    net = tiny_protonet(prior={"weight": 2.0})
    classes = ["card_arrival", "lost_or_stolen_card"]
    with torch.no_grad():
        names = net.encoder(net.encoder.tokenize([Example(name_text(c, "{name}"), c) for c in classes]))
        s, y = torch.randn(3, 32), torch.tensor([0, 0, 1])
        protos = net.name_prior.mix(torch.stack([s[:2].mean(0), s[2]]), y, 2, net.name_prior.embeddings(net, classes))
        expected = torch.stack([(2 * s[:2].mean(0) + 2 * names[0]) / 4, (s[2] + 2 * names[1]) / 3])
        assert torch.allclose(protos, expected, atol=1e-5)
        zero_shot = tiny_protonet(prior={"weight": 1e9})
        q = torch.randn(5, 32)
        by_names = -torch.cdist(q, names) ** 2
        assert torch.equal(zero_shot.predict_from_features(s, y, q, 2, EpisodeContext(classes)).argmax(-1),
                           by_names.argmax(-1))


def test_k0_episodes_are_classified_by_the_names_alone():
    """An empty support set: the prototypes are the name embeddings; transductive steps start from
    them, each name weighing w pseudo-examples (one step against a hand computation); a learner
    without a name prior refuses."""
    from metarun.data.dataset import Example
    from metarun.errors import ConfigError

    net = tiny_protonet(prior={"weight": 2.0})
    classes = ["card_arrival", "lost_or_stolen_card", "pin_blocked"]
    empty_s, empty_y = torch.zeros(0, 32), torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        names = net.encoder(net.encoder.tokenize([Example(name_text(c, "{name}"), c) for c in classes]))
        q = names[[0, 1, 2, 2]] + 0.1 * torch.randn(4, 32)
        logits = net.predict_from_features(empty_s, empty_y, q, 3, EpisodeContext(classes))
        assert logits.shape == (4, 3)
        assert torch.allclose(logits, -torch.cdist(q, names) ** 2, atol=1e-3)
        stepped = net.predict_from_features(empty_s, empty_y, q, 3, EpisodeContext(classes, SoftKMeans(1)))
        w = (-torch.cdist(q, names) ** 2).softmax(-1)  # (4, 3): each query's share of each class
        protos = (2.0 * names + w.T @ q) / (2.0 + w.sum(0)).unsqueeze(-1)
        assert torch.allclose(stepped, -torch.cdist(q, protos) ** 2, rtol=1e-4, atol=1e-3)
        rectified = net.predict_from_features(empty_s, empty_y, q, 3, EpisodeContext(classes, Rectify()))
        assert rectified.shape == (4, 3) and torch.isfinite(rectified).all()
    assert tiny_protonet(prior={"learned": True}).zero_shot and not tiny_protonet().zero_shot
    assert not tiny_protonet(prior={"weight": 0.0}).zero_shot
    with pytest.raises(ConfigError, match="K = 0 episodes .* needs refiner=name_prior with refiner.name_prior.weight"):
        tiny_protonet(prior={"weight": 0.0}).predict_from_features(empty_s, empty_y, q, 3, EpisodeContext(classes))


def test_bad_label_prior_options_name_the_choices():
    from metarun.errors import ConfigError

    with pytest.raises(ConfigError, match="refiner.name_prior.weight=-1.0 is not valid"):
        NamePrior(weight=-1.0)
    with pytest.raises(ConfigError, match=r"must contain \{name\}"):
        NamePrior(template="about")
    with pytest.raises(ConfigError, match="refiner=name_prior refines class prototypes, which learner=matching"):
        from metarun.learners.metric.matching import MatchingNet

        net = MatchingNet(nn.Identity())
        net.name = "matching"
        net.attach(refiners=[NamePrior()])


# -- contrastive episode losses (ContrastNet) -------------------------------------------------------


def test_supervised_contrastive_loss_equals_a_hand_computation():
    import math

    from metarun.learners.functional import supervised_contrastive

    torch.manual_seed(0)
    z, y, t = torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 2]), 0.5  # the last item has no positive
    u = torch.nn.functional.normalize(z, dim=-1)
    total, anchors = 0.0, 0
    for i in range(5):
        positives = [p for p in range(5) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(u[i] @ u[a]) / t) for a in range(5) if a != i)
        total += -sum(math.log(math.exp(float(u[i] @ u[p]) / t) / denom) for p in positives) / len(positives)
        anchors += 1
    assert float(supervised_contrastive(z, y, t)) == pytest.approx(total / anchors, rel=1e-5)


def test_contrastive_terms_add_to_the_loss():
    """Contrastive terms add to the episode loss and train the encoder."""
    from conftest import compose_cfg
    from metarun.config import build
    from metarun.data.collate import EpisodeDataset
    from metarun.data.sampler import EpisodeSampler

    cfg = compose_cfg(["debug=fast"])
    data = build(cfg.data, "data")
    torch.manual_seed(0)
    plain = tiny_protonet().train()
    torch.manual_seed(0)
    both = tiny_protonet().train()
    attached(both, SupervisedContrastive(0.5), InstanceContrastive(0.5))
    episode = EpisodeDataset(EpisodeSampler(data.train, 3, 2, 2, seed=0), plain.encoder.tokenize, 1)[0]
    torch.manual_seed(1)
    base = plain.training_loss(episode)
    torch.manual_seed(1)
    out = both.training_step([episode])
    assert {"supcon", "instance"} <= set(out.metrics)
    expected = base.loss + 0.5 * out.metrics["supcon"] + 0.5 * out.metrics["instance"]
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    assert out.metrics["instance"] > 0  # two dropout views of a sentence differ, but not by much
    out.loss.backward()
    assert all(p.grad is not None for p in both.encoder.parameters() if p.requires_grad)
    assert both.trains_on_text and not plain.trains_on_text  # the dropout view needs the text


def test_checkpoints_from_before_and_after_the_label_prior_load():
    """The fixed name weight comes from the config: a run trained before the prior existed (no
    `_label_weight` in its state) and one that saved it both load, and the config's weight wins; a
    learned weight is saved, and one saved before refiners (ProtoNet's `label_weight_raw`) loads."""
    state = ProtoNet(nn.Linear(3, 3)).trained_state()
    assert "_label_weight" not in state
    p = ProtoNet(nn.Linear(3, 3)).attach(refiners=[NamePrior(weight=2.0)])
    p.load_trained_state(state)
    p.load_trained_state({**state, "_label_weight": torch.tensor(1.0)})
    assert p.name_prior.weight.item() == 2.0
    learned = ProtoNet(nn.Linear(3, 3)).attach(refiners=[NamePrior(learned=True)]).trained_state()
    assert "refiners.0.weight_raw" in learned  # a learned weight is trained, so it is saved
    with pytest.raises(Exception, match="does not fit"):
        ProtoNet(nn.Linear(3, 3)).load_trained_state(learned)
    old = {**state, "label_weight_raw": torch.tensor(0.25)}  # a checkpoint of learner.label_prior=learned
    fresh = ProtoNet(nn.Linear(3, 3)).attach(refiners=[NamePrior(learned=True)])
    fresh.load_trained_state(old)
    assert fresh.name_prior.weight_raw.item() == 0.25


def test_transductive_steps_move_prototypes_to_queries():
    """Class 1's queries lie far right: its prototype follows them, and the midpoint passes the first query."""
    net = ProtoNet(nn.Identity())
    s, y = torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([0, 1])
    q = torch.tensor([[2.3, 0.0], [8.0, 0.0], [8.0, 0.0], [8.0, 0.0]])  # one query just past the midpoint
    assert net.predict_from_features(s, y, q, 2).argmax(-1).tolist() == [1, 1, 1, 1]
    assert net.predict_from_features(s, y, q, 2, EpisodeContext(refiner=SoftKMeans(3))).argmax(-1).tolist() == [
        0, 1, 1, 1]


def test_a_learned_label_weight_has_its_own_rate_and_grads():
    net = tiny_protonet(prior={"learned": True, "weight": 1.5})
    prior = net.name_prior
    assert float(prior.weight.detach()) == pytest.approx(1.5, rel=1e-5)
    groups = net.optimizer_groups(2e-5)
    assert groups[-1]["params"] == [prior.weight_raw] and groups[-1]["lr"] == 1e-2
    assert all(p is not prior.weight_raw for g in groups[:-1] for p in g["params"])
    net.train()
    s, y, q = torch.randn(4, 32), torch.tensor([0, 0, 1, 1]), torch.randn(2, 32)
    net.predict_from_features(s, y, q, 2, EpisodeContext(["a_b", "c"])).sum().backward()
    assert prior.weight_raw.grad is not None and prior.weight_raw.grad.abs() > 0


def test_rectified_prototypes_match_a_hand_computation():
    """BD-CSPN: queries shifted by mean(support) - mean(query), each joins its nearest prototype by
    cosine, each prototype the softmax(10 cos)-weighted mean of its members; checked member by member."""
    import math

    from metarun.learners.functional import rectified_prototypes

    s = torch.tensor([[1.0, 0.0], [1.0, 0.4], [0.0, 1.0], [0.2, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    q = torch.tensor([[2.0, 0.5], [0.5, 2.0], [1.5, 1.4]])
    assert torch.equal(rectified_prototypes(s, y, q[:0], 2), prototypes(s, y, 2))  # no queries: the class means
    protos = [s[:2].mean(0), s[2:].mean(0)]
    shifted = q + (s.mean(0) - q.mean(0))
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    joined = [max(range(2), key=lambda c: cos(x, protos[c])) for x in shifted]
    expected = []
    for c in range(2):
        members = [x for x, label in zip(s, y.tolist()) if label == c] + [x for x, j in zip(shifted, joined) if j == c]
        w = [math.exp(10 * cos(x, protos[c])) for x in members]
        expected.append(sum(wi * x for wi, x in zip(w, members)) / sum(w))
    torch.testing.assert_close(rectified_prototypes(s, y, q, 2), torch.stack(expected), rtol=1e-5, atol=1e-6)
