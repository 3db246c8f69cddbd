"""Meta-learners that learn the learner: the LSTM optimiser (Ravi & Larochelle 2017) and
HyperNetworks (generated heads, LEOPARD; generated LoRA deltas)."""

import math

import pytest
import torch

from conftest import FeatureEncoder, feature_episode, text_episode, tiny_encoder
from metarun.errors import ConfigError
from metarun.learners.functional import sgd_update
from metarun.learners.gradient.hypernet import HyperNet
from metarun.learners.gradient.lstm_meta import LSTMMeta, LSTMOptimizer, preprocess
from metarun.learners.gradient.maml import MAML
from metarun.learners.metric.protonet import ProtoNet


def lstm_meta(seed=0, **kw):
    torch.manual_seed(seed)
    return LSTMMeta(FeatureEncoder(4, 6), **kw)


def grads_of(learner, episode):
    learner.zero_grad()
    learner.training_loss(episode).loss.backward()
    return {n: p.grad for n, p in learner.named_parameters()}


# -- the LSTM optimiser -------------------------------------------------------------------------

def test_gradient_preprocessing_formula():
    """Preprocessing is log magnitude and sign above e minus p and scaled value below."""
    x = torch.tensor([3.0, -0.5, 1e-6, -1e-7, 0.0])
    out = preprocess(x, p=10.0)
    assert torch.allclose(out[0], torch.tensor([math.log(3.0) / 10, 1.0]))
    assert torch.allclose(out[1], torch.tensor([math.log(0.5) / 10, -1.0]))
    assert torch.allclose(out[2], torch.tensor([-1.0, 1e-6 * math.exp(10)]))
    assert torch.allclose(out[3], torch.tensor([-1.0, -1e-7 * math.exp(10)]))
    assert torch.equal(out[4], torch.tensor([-1.0, 0.0]))


def test_with_frozen_open_gates_one_step_is_an_sgd_step():
    """Forget gate saturated at 1, input gate sigmoid(b_i) with no input weights: theta - lr * grad
    (up to float rounding: the cell's fused kernels round differently by CPU and thread count)."""
    opt = LSTMOptimizer(["w", "b"], inner_lr=0.05)
    with torch.no_grad():
        opt.forget_weight.zero_(), opt.input_weight.zero_(), opt.forget_bias.fill_(30.0)  # sigmoid(30) == 1.0 in fp32
    params = {"w": torch.randn(3, 4), "b": torch.randn(3), "other": torch.randn(2)}
    grads = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    new = opt.updater()(0, params, grads, torch.tensor(1.3))
    lr = torch.sigmoid(opt.input_bias).item()
    assert lr == pytest.approx(0.05, rel=1e-6)
    expected = sgd_update(params, grads, {"w": lr, "b": lr})
    for n in ("w", "b"):
        torch.testing.assert_close(new[n], expected[n], rtol=1e-6, atol=1e-7)
    assert new["other"] is params["other"]


def test_initial_gates_are_sgd_at_inner_lr():
    """With the paper's small gate weights the first update is close to SGD at inner_lr."""
    opt = LSTMOptimizer(["w"], inner_lr=0.1, forget_bias=5.0)
    params, grads = {"w": torch.randn(50)}, {"w": torch.randn(50)}
    new = opt.updater()(0, params, grads, torch.tensor(0.7))["w"]
    theta, g = params["w"], grads["w"]
    # f = sigmoid(5 + small) ~ 0.993, i = sigmoid(logit(0.1) + small) ~ 0.1
    assert ((new - (theta - 0.1 * g)).abs() <= 0.01 * theta.abs() + 0.005 * g.abs()).all()


def test_lstm_meta_gradients_reach_every_meta_parameter():
    learner = lstm_meta(inner_steps=3, tensor_embedding=3)
    grads = grads_of(learner, feature_episode(d=4))
    names = {n for n, _ in learner.named_parameters()}
    assert {"policy.lstm.weight_ih", "policy.lstm.weight_hh", "policy.forget_weight", "policy.input_bias",
            "policy.embedding.weight", "encoder.lin.weight"} <= names
    for n, g in grads.items():
        assert g is not None and g.abs().sum() > 0, n


def test_lstm_meta_orders_and_steps_change_the_loss():
    """Lstm meta first and second order differ and adapting more steps changes the loss."""
    ep = feature_episode(d=4)
    first = grads_of(lstm_meta(inner_steps=2, first_order=True), ep)
    second = grads_of(lstm_meta(inner_steps=2, first_order=False), ep)
    assert any((first[n] - second[n]).abs().max() > 1e-6 for n in first)
    zero, three = lstm_meta(inner_steps=0), lstm_meta(inner_steps=3)
    assert zero.training_loss(ep).loss.item() != pytest.approx(three.training_loss(ep).loss.item())


def test_lstm_meta_predict_is_pure_and_adapts_all():
    """Lstm meta predict leaves meta parameters unchanged and adapts every encoder layer with adapt all."""
    learner = lstm_meta(adapt="all", inner_steps=2)
    ep = feature_episode(d=4)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    logits = learner.predict(ep)
    assert logits.shape == (6, 3) and not logits.requires_grad
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert learner.policy.names == ["encoder.lin.weight", "encoder.lin.bias", "head.weight", "head.bias"]
    assert not learner.feature_eval  # the encoder adapts: no cached-feature evaluation


def test_lstm_meta_trains_the_meta_learner_at_its_own_rate():
    groups = lstm_meta(meta_lr=3e-3).param_groups(2e-5)
    assert [g["lr"] for g in groups] == [2e-5, 3e-3]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(p.numel() for p in lstm_meta().policy.parameters())


@pytest.mark.parametrize("kw, message", [
    (dict(inner_lr=1.5), "learner.inner_lr is the initial input gate"),
    (dict(hidden_size=0), "learner.hidden_size=0 is not valid; it must be a whole number of at least 1"),
    (dict(adapt="layers"), "learner.adapt='layers' is not valid; choose one of: all, head, top_k"),
    (dict(meta_lr=0), "learner.meta_lr=0 is not valid; it must be a positive number"),
])
def test_lstm_meta_bad_options_are_named(kw, message):
    with pytest.raises(ConfigError, match=message):
        lstm_meta(**kw)


# -- HyperNetworks ------------------------------------------------------------------------------

def test_untrained_generated_head_is_protonet():
    torch.manual_seed(0)
    enc = FeatureEncoder(4, 6)
    ep = feature_episode(d=4)
    hyper = HyperNet(enc, generate="head")
    proto = ProtoNet(enc)
    with torch.no_grad():
        a, b = hyper.predict(ep), proto.predict(ep)
    assert torch.allclose(a.softmax(-1), b.softmax(-1), atol=1e-6)  # logits differ by a per-query constant
    maml = MAML(enc, inner_steps=0)  # another code path: equal up to float rounding
    torch.testing.assert_close(hyper.predict(ep), maml.predict(ep), rtol=1e-5, atol=1e-5)
    assert hyper.feature_eval


def test_generated_head_is_the_class_mean_without_skip():
    """Generated head without skip is the per class mean of the generator."""
    torch.manual_seed(0)
    hyper = HyperNet(FeatureEncoder(4, 6), generate="head", skip="none")
    torch.nn.init.normal_(hyper.generator[-1].weight)
    feats, labels = torch.randn(6, 6), torch.tensor([0, 0, 1, 1, 2, 2])
    w, b = hyper._init_head(feats, labels, 3)
    out = hyper.generator(feats)
    assert torch.allclose(w[1], out[2:4, :-1].mean(0)) and torch.allclose(b[2], out[4:6, -1].mean())


def test_generated_head_gradients_reach_every_part():
    """Generated head gradients reach the generator and inner rates."""
    torch.manual_seed(0)
    hyper = HyperNet(FeatureEncoder(4, 6), generate="head", inner_steps=2)
    grads = grads_of(hyper, feature_episode(d=4))
    assert grads["generator.2.weight"].abs().sum() > 0  # the zero output layer learns first
    torch.nn.init.normal_(hyper.generator[-1].weight, std=0.1)
    grads = grads_of(hyper, feature_episode(d=4))
    for n, g in grads.items():
        assert g is not None and g.abs().sum() > 0, n
    assert "policy.lrs" in grads  # LEOPARD's learned per-step rates


def test_untrained_adapter_generator_leaves_the_encoder_as_it_is():
    enc = tiny_encoder()
    ep = text_episode(enc)
    hyper = HyperNet(enc, generate="adapters")
    enc.eval()
    with torch.no_grad():  # functional_call with zero deltas against a 0-step MAML: equal up to float rounding
        torch.testing.assert_close(hyper.predict(ep), MAML(enc, inner_steps=0).predict(ep), rtol=1e-5, atol=1e-5)
    assert not hyper.feature_eval
    # 2 layers x 6 target matrices, one delta each, all zero
    z = hyper.generator.task_embedding(enc(ep.support), ep.support_labels, 3)
    deltas = hyper.generator.deltas(z)
    assert len(deltas) == 12 and all(d.abs().sum() == 0 for d in deltas.values())


def test_adapter_generator_gradients_and_label_order():
    """Adapter generator gradients reach every part and the task embedding ignores label order."""
    enc = tiny_encoder()
    ep = text_episode(enc)
    hyper = HyperNet(enc, generate="adapters", freeze_encoder=True, inner_steps=1)
    for gen in hyper.generator.generators.values():
        torch.nn.init.normal_(gen[-1].weight, std=0.1)
    grads = grads_of(hyper, ep)
    trainable = [n for n, p in hyper.named_parameters() if p.requires_grad]
    assert "policy.lrs" in trainable and all(n.startswith(("generator.", "policy.")) for n in trainable)
    for n in trainable:
        assert grads[n] is not None and grads[n].abs().sum() > 0, n
    feats = torch.randn(6, enc.out_dim)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    perm = torch.tensor([5, 4, 1, 0, 3, 2])  # shots and classes reordered, class ids permuted
    z1 = hyper.generator.task_embedding(feats, labels, 3)
    z2 = hyper.generator.task_embedding(feats[perm], torch.tensor([1, 1, 2, 2, 0, 0]), 3)
    assert torch.allclose(z1, z2, atol=1e-6)


def test_adapter_predict_leaves_meta_parameters_unchanged():
    enc = tiny_encoder()
    ep = text_episode(enc)
    hyper = HyperNet(enc, generate="adapters", inner_steps=1)
    for gen in hyper.generator.generators.values():
        torch.nn.init.normal_(gen[-1].weight, std=0.1)
    before = {k: v.clone() for k, v in hyper.state_dict().items()}
    logits = hyper.predict(ep)
    assert logits.shape == (6, 3)
    assert all(torch.equal(before[k], v) for k, v in hyper.state_dict().items())


@pytest.mark.parametrize("kw, message", [
    (dict(generate="weights"), "learner.generate='weights' is not valid; choose one of: head, adapters"),
    (dict(skip="mean"), "learner.skip='mean' is not valid; choose one of: proto, none"),
    (dict(generate="adapters"), "learner.generate=adapters generates LoRA deltas for transformer blocks"),
    (dict(rank=0), "learner.rank=0 is not valid; it must be a whole number of at least 1"),
])
def test_hypernet_bad_options_are_named(kw, message):
    with pytest.raises(ConfigError, match=message):
        HyperNet(FeatureEncoder(4, 6), **kw)


def test_hypernet_unknown_target_lists_the_linear_layers():
    with pytest.raises(ConfigError, match=r"blocks have: attention.output.dense, attention.self.key"):
        HyperNet(tiny_encoder(), generate="adapters", targets=["attention.qkv"])
