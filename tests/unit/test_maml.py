"""Gradient-based meta-learners: the inner loop against hand derivations, meta-gradients against
finite differences, first vs second order, vmap vs sequential, and the learner contract."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import feature_episode, text_episode, tiny_encoder
from metarun.errors import ConfigError
from metarun.learners.functional import adapt, sgd
from metarun.learners.gradient.maml import MAML, Reptile
from metarun.models.base import Encoder
from metarun.models.encoders import TransformerEncoder
from metarun.models.mlp import MLPEncoder


def mlp_maml(dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return MAML(MLPEncoder(4, 3).to(dtype), **kw)


def meta_grads(learner, episode):
    learner.zero_grad()
    learner.training_loss(episode).loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def test_one_inner_step_on_linear_model_matches_hand_derivation():
    x, y = torch.randn(5, 3), torch.randn(5)
    w = torch.randn(3, requires_grad=True)
    out = adapt(
        lambda p: ((x @ p["w"] - y) ** 2).mean(), {"w": w}, ["w"], 1, sgd(lambda s: {"w": 0.1}), first_order=False
    )
    expected = w - 0.1 * (2 / 5) * x.T @ (x @ w - y)
    assert torch.allclose(out["w"], expected, atol=1e-6)


def test_second_order_meta_gradient_matches_finite_differences():
    learner = mlp_maml(torch.float64, inner_steps=2, inner_lr=0.5, head_init="zeros")
    ep = feature_episode(dtype=torch.float64)
    grads = meta_grads(learner, ep)
    eps = 1e-6
    for name, p in learner.named_parameters():
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            up = learner.training_loss(ep).loss.item()
            flat[i] = old - eps
            down = learner.training_loss(ep).loss.item()
            flat[i] = old
            assert abs(grads[name].view(-1)[i].item() - (up - down) / (2 * eps)) < 1e-6, (name, i)


def test_first_order_matches_its_definition():
    """First and second order differ and first order matches its definition."""
    ep = feature_episode()
    second = meta_grads(mlp_maml(inner_steps=2, inner_lr=0.5, head_init="zeros"), ep)
    learner = mlp_maml(inner_steps=2, inner_lr=0.5, head_init="zeros", first_order=True)
    first = meta_grads(learner, ep)
    assert any((first[n] - second[n]).abs().max() > 1e-4 for n in first)
    # FOMAML reference: the query-loss gradient at the adapted weights, applied to the initial weights.
    fast = {n: p.detach().clone().requires_grad_() for n, p in learner.named_parameters()}
    head = {"w": torch.zeros(3, 3, requires_grad=True), "b": torch.zeros(3, requires_grad=True)}
    params = {**fast, **head}
    for _ in range(2):
        feats = torch.func.functional_call(
            learner.encoder, {k[8:]: v for k, v in params.items() if k in fast}, (ep.support,)
        )
        loss = F.cross_entropy(feats @ params["w"].T + params["b"], ep.support_labels)
        g = torch.autograd.grad(loss, list(params.values()))
        params = {k: (v - 0.5 * gi).detach().requires_grad_() for (k, v), gi in zip(params.items(), g)}
    feats = torch.func.functional_call(learner.encoder, {k[8:]: v for k, v in params.items() if k in fast}, (ep.query,))
    loss = F.cross_entropy(feats @ params["w"].T + params["b"], ep.query_labels)
    ref = dict(zip(fast, torch.autograd.grad(loss, [params[k] for k in fast])))
    for n in first:
        assert torch.allclose(first[n], ref[n], atol=1e-5), n


class PlainMLP(Encoder):
    """An MLP without `forward_batched`: batched tasks then go through torch.func.vmap."""

    def __init__(self):
        super().__init__()
        self.inner, self.out_dim = MLPEncoder(4, 3), 3

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("engine", ["forward_batched", "torch.func.vmap"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("head_init", ["proto", "zeros"])
def test_batched_and_sequential_meta_gradients_agree(engine, first_order, head_init):
    torch.manual_seed(0)
    encoder = MLPEncoder(4, 3) if engine == "forward_batched" else PlainMLP()
    learner = MAML(encoder, inner_steps=2, inner_lr=0.3, first_order=first_order, head_init=head_init, vmap_tasks=True)
    episodes = [feature_episode(seed=s) for s in range(4)]
    learner.zero_grad()
    out = learner.training_loss_tasks(episodes)
    out.loss.backward()
    batched = {n: p.grad.clone() for n, p in learner.named_parameters()}
    learner.zero_grad()
    for ep in episodes:
        (learner.training_loss(ep).loss / 4).backward()
    for n, p in learner.named_parameters():
        assert torch.allclose(batched[n], p.grad, atol=1e-6), n


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(first_order=True),
        dict(adapt="head"),
        dict(adapt="top_k", top_k=1),
        dict(step_size="per_step"),
        dict(step_size="per_param", first_order=True),
    ],
)
def test_every_meta_parameter_gets_a_gradient(kw):
    """Every meta parameter gets a gradient and predict is pure."""
    enc = tiny_encoder()
    learner = MAML(enc, inner_steps=2, inner_lr=0.01, **kw)
    ep = text_episode(enc)
    out = learner.training_loss(ep)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [
        n for n, p in learner.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing
    before = copy.deepcopy(learner.state_dict())
    learner.eval()
    logits = learner.predict(ep)
    assert logits.shape == (6, 3) and not logits.requires_grad
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_second_order_uses_eager_attention():
    """Second order uses eager attention and refuses kernels without double backward."""
    enc = tiny_encoder()
    assert enc.model.config._attn_implementation == "sdpa"
    MAML(enc, first_order=False)
    assert enc.model.config._attn_implementation == "eager"
    enc = tiny_encoder()
    enc.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match=r"first_order=true.*learner=anil"):
        MAML(enc, first_order=False)
    MAML(enc, first_order=True)  # first order needs no double backward
    MAML(enc, adapt="head")  # nor does a head-only inner loop


def test_anil_feature_eval_matches_episode_eval():
    enc = tiny_encoder()
    learner = MAML(enc, adapt="head", inner_steps=3, inner_lr=0.5).eval()
    ep = text_episode(enc)
    direct = learner.predict(ep)
    with torch.inference_mode():
        s, q = learner.embed(ep.support), learner.embed(ep.query)
        cached = learner.predict_from_features(s, ep.support_labels, q, 3)
    assert learner.feature_eval and torch.allclose(direct, cached, atol=1e-5)


def test_metasgd_learning_rates_receive_gradients():
    learner = mlp_maml(inner_steps=1, step_size="per_param")
    meta_grads(learner, feature_episode())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.policy.lrs)


def test_reptile_pseudo_gradient_is_theta_minus_phi():
    torch.manual_seed(0)
    learner = Reptile(MLPEncoder(4, 3), inner_steps=3, inner_lr=0.1, head_init="zeros")
    ep = feature_episode()
    grads = meta_grads(learner, ep)
    x = torch.cat([ep.support, ep.query])
    y = torch.cat([ep.support_labels, ep.query_labels])
    phi = {n: p.detach().clone().requires_grad_() for n, p in learner.encoder.named_parameters()}
    phi.update(w=torch.zeros(3, 3, requires_grad=True), b=torch.zeros(3, requires_grad=True))
    for _ in range(3):
        feats = torch.func.functional_call(learner.encoder, {k: v for k, v in phi.items() if k not in "wb"}, (x,))
        g = torch.autograd.grad(F.cross_entropy(feats @ phi["w"].T + phi["b"], y), list(phi.values()))
        phi = {k: (v - 0.1 * gi).detach().requires_grad_() for (k, v), gi in zip(phi.items(), g)}
    for n, p in learner.encoder.named_parameters():
        assert torch.allclose(grads[f"encoder.{n}"], p.detach() - phi[n], atol=1e-6)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(inner_steps=-1), "learner.inner_steps"),
        (dict(inner_lr=0.0), "learner.inner_lr"),
        (dict(inner_lr=-1e-3), "learner.inner_lr"),
        (dict(adapt="some"), "all, head, top_k"),
        (dict(head_init="random"), "proto, zeros"),
        (dict(step_size="adam"), "scalar, per_step, per_param"),
        (dict(test_inner_steps=-2), "test_inner_steps"),
    ],
)
def test_bad_options_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        MAML(MLPEncoder(4, 3), **kw)


def test_vmap_with_an_adapting_transformer_is_refused():
    """Vmap with an adapting transformer is refused at start up."""
    with pytest.raises(ConfigError, match=r"vmap_tasks=true.*vmap_tasks=false"):
        MAML(tiny_encoder(), vmap_tasks=True, first_order=True)


@pytest.mark.parametrize("head_init", ["proto", "zeros"])
def test_anil_vmap_batch_equals_sequential_tasks(head_init):
    """Anil runs a meta batch of text tasks in one forward with the sequential meta gradient."""
    enc = tiny_encoder()
    learner = MAML(enc, adapt="head", inner_steps=3, inner_lr=0.5, head_init=head_init, vmap_tasks=True).eval()
    episodes = [text_episode(enc, shift=s) for s in range(4)]  # sentences of different lengths per task
    assert len({e.support["input_ids"].shape[1] for e in episodes}) > 1
    assert learner.batch_tasks
    learner.zero_grad()
    out = learner.training_loss_tasks(episodes)
    out.loss.backward()
    batched = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    learner.zero_grad()
    sequential = 0.0
    for ep in episodes:
        loss = learner.training_loss(ep).loss / 4
        loss.backward()
        sequential += loss.item()
    assert out.loss.item() == pytest.approx(sequential, abs=1e-5)
    assert batched.keys() == {n for n, p in learner.named_parameters() if p.grad is not None} and batched
    for n, p in learner.named_parameters():
        if p.grad is not None:
            assert torch.allclose(batched[n], p.grad, atol=1e-5), n


def four_layer_encoder():
    torch.manual_seed(0)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, **no_dropout)
    return TransformerEncoder(pretrained=False, name="tiny4", config_overrides=cfg)


def test_the_split_forward_gives_the_full_forwards_features():
    enc = four_layer_encoder().eval()
    ep = text_episode(enc, shift=1)
    with torch.no_grad():
        full = enc(ep.support)
        for start in range(5):
            states, mask = enc.layer_inputs(ep.support, start)
            torch.testing.assert_close(enc(ep.support, from_layer=(start, states, mask)), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("head_init", ["proto", "zeros"])
def test_split_forward_has_the_full_meta_gradient(first_order, top_k, head_init):
    """The support set's forward below the adapted layers runs once per task; the meta-gradient (and
    loss) equal the path that runs the whole encoder at every inner step."""
    enc = four_layer_encoder()
    learner = MAML(enc, inner_steps=3, inner_lr=0.1, adapt="top_k", top_k=top_k, head_init=head_init,
                   first_order=first_order)
    assert learner.split_at == 4 - top_k
    ep = text_episode(enc, shift=1)
    split = meta_grads(learner, ep)
    learner.split_at = 0  # the whole encoder at every inner step
    full = meta_grads(learner, ep)
    assert split.keys() == full.keys() and any(k.startswith("encoder.model.encoder.layer.0.") for k in split)
    assert_same_gradients(split, full)


def assert_same_gradients(split: dict, full: dict) -> None:
    """Within 1e-5 relative (norm of the difference over the norm), tensor by tensor; gradients that
    are zero in exact arithmetic (attention key biases: softmax ignores a shift shared by all keys)
    are float noise of ~1e-11 and are held to the overall scale instead."""
    scale = max(g.norm() for g in full.values())
    for name in full:
        diff = (split[name] - full[name]).norm()
        assert diff <= 1e-5 * max(full[name].norm(), 1e-3 * scale), (name, diff.item(), full[name].norm().item())


def test_lstm_meta_top_k_is_unchanged_by_the_split_forward():
    from metarun.learners.gradient.lstm_meta import LSTMMeta

    enc = four_layer_encoder()
    learner = LSTMMeta(enc, inner_steps=2, adapt="top_k", top_k=1)
    ep = text_episode(enc, shift=1)
    split = meta_grads(learner, ep)
    learner.split_at = 0
    full = meta_grads(learner, ep)
    assert_same_gradients(split, full)


# -- adapt=lora: low-rank deltas of the top layers adapt ---------------------------------------------


def test_lora_step_zero_is_the_meta_learned_encoder():
    enc = four_layer_encoder()
    ep = text_episode(enc, shift=1)
    lora = MAML(enc, inner_steps=0, adapt="lora", top_k=2, lora_rank=3)
    head = MAML(enc, inner_steps=0, adapt="head")
    assert len(lora.policy.names) == 2 * 6 + 2 and lora.split_at == 2 and not lora.feature_eval
    assert lora.lora.shapes["lora.up.3_intermediate_dense"] == (32, 3)
    torch.testing.assert_close(lora.predict(ep), head.predict(ep), rtol=1e-5, atol=1e-6)


def lora_weights(learner, enc) -> dict[str, str]:
    """Encoder weight name -> the key of its low-rank delta."""
    from metarun.learners.gradient.low_rank import BERT_TARGETS

    names = {id(p): n for n, p in enc.named_parameters()}
    return {names[id(layer.get_submodule(t).weight)]: f"{i}_{t.replace('.', '_')}"
            for i, layer in enumerate(enc.transformer_layers()) for t in BERT_TARGETS
            if f"{i}_{t.replace('.', '_')}" in learner.lora.down}


@pytest.mark.parametrize("top_k", [1, 4])
def test_lora_inner_step_is_the_gradient_through_the_delta(top_k):
    """One inner step from B = 0: B1 = -lr dL/dW A^T for each adapted W (the chain rule through W + B A),
    the head's SGD step beside it; the adapted model's query logits equal that update applied by hand."""
    from torch.func import functional_call

    from metarun.learners.functional import linear_head, proto_head

    enc = four_layer_encoder()
    learner = MAML(enc, inner_steps=1, inner_lr=0.5, adapt="lora", top_k=top_k, lora_rank=2, first_order=True)
    ep = text_episode(enc, shift=1)
    weights = dict(enc.named_parameters())
    targets = {w: learner.lora.down[key] for w, key in lora_weights(learner, enc).items()}
    w0, b0 = proto_head(enc(ep.support), ep.support_labels, ep.n_way)
    w0, b0 = w0.detach().requires_grad_(), b0.detach().requires_grad_()
    loss = F.cross_entropy(linear_head(enc(ep.support), w0, b0), ep.support_labels)
    grads = torch.autograd.grad(loss, [weights[w] for w in targets] + [w0, b0])
    moved = {w: weights[w] - 0.5 * (g @ a.T) @ a for (w, a), g in zip(targets.items(), grads)}
    w1, b1 = w0 - 0.5 * grads[-2], b0 - 0.5 * grads[-1]
    expected = linear_head(functional_call(enc, moved, (ep.query,)), w1, b1)
    torch.testing.assert_close(learner.predict(ep), expected.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first_order", [True, False])
def test_lora_meta_gradient_reaches_down_projections(first_order):
    """The down-projections are meta-learned (they get gradients, in first order through the adapted
    B); the split forward gives the full forward's meta-gradient."""
    enc = four_layer_encoder()
    learner = MAML(enc, inner_steps=2, inner_lr=0.1, adapt="lora", top_k=1, first_order=first_order)
    ep = text_episode(enc, shift=1)
    split = meta_grads(learner, ep)
    assert all(split[f"lora.down.{k}"].abs().sum() > 0 for k in learner.lora.down)
    assert any(k.startswith("encoder.model.encoder.layer.0.") for k in split)
    learner.split_at = 0
    assert_same_gradients(split, meta_grads(learner, ep))


def test_bad_lora_options_are_named():
    enc = four_layer_encoder()
    with pytest.raises(ConfigError, match="learner.top_k=5 is not valid with learner.adapt=lora: encoder=tiny4 has 4 "
                                          "transformer layers, so give 1 to 4"):
        MAML(enc, adapt="lora", top_k=5)
    with pytest.raises(ConfigError, match="learner.lora_rank=1000 is larger than the adapted layers allow"):
        MAML(enc, adapt="lora", lora_rank=1000)
    with pytest.raises(ConfigError, match=r"targets \['attention.query'\] must name linear layers .* intermediate"):
        MAML(enc, adapt="lora", lora_targets=["attention.query"])
    with pytest.raises(ConfigError, match="learner.lora_rank=0 is not valid"):
        MAML(enc, adapt="lora", lora_rank=0)
    with pytest.raises(ConfigError, match="adapt=lora adapts low-rank deltas of transformer layers"):
        MAML(MLPEncoder(4, 3), adapt="lora")
