"""SNAIL, MANN, Siamese and Induction networks: masks, memory addressing, routing, pair balance and
the learner contract."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import FeatureEncoder, feature_episode
from metarun.errors import ConfigError
from metarun.learners.metric.induction import InductionNet, dynamic_routing, squash
from metarun.learners.memory.mann import MANN, cosine_read_weights, least_used
from metarun.learners.metric.siamese import Siamese
from metarun.learners.memory.snail import SNAIL, AttentionBlock, DenseBlock

CLASSES = ["a", "b", "c", "d"]


def make(kind, **kw):
    torch.manual_seed(0)
    enc = FeatureEncoder(4, 8)
    if kind is MANN:
        return MANN(enc, CLASSES, hidden=16, slots=8, slot_width=5, read_heads=2, max_way=4, **kw)
    if kind is SNAIL:
        return SNAIL(enc, max_way=4, max_shot=3, filters=6, attention=[[4, 3], [5, 4], [6, 5]], **kw)
    return kind(enc, **kw)


def episode_with_classes(**kw):
    ep = feature_episode(**kw)
    ep.meta["classes"] = tuple(CLASSES[: ep.n_way])
    return ep


# -- the contract, for all four -----------------------------------------------------------------

@pytest.mark.parametrize("kind, kw", [(SNAIL, {}), (SNAIL, {"causal": False}), (MANN, {}),
                                      (MANN, {"memory": "persistent"}), (Siamese, {}), (InductionNet, {})])
def test_gradients_reach_every_parameter_predict_pure(kind, kw):
    """Gradients reach every parameter and predict changes nothing."""
    learner = make(kind, **kw)
    ep = episode_with_classes(k=4, d=4)  # 12 support items: SNAIL's largest dilation (8) reads a support item
    learner.train()
    learner.zero_grad()
    learner.training_loss(ep).loss.backward()
    for n, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    learner.eval()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    with torch.no_grad():
        logits = learner.predict(ep)
        again = learner.predict(ep)
    assert logits.shape == (6, 3) and torch.equal(logits, again)  # deterministic at evaluation
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert learner.feature_eval


# -- SNAIL ----------------------------------------------------------------------------------------

def reference_sequence(blocks, x, causal=True):
    """The textbook SNAIL forward over one (T, C) sequence: causal convolutions by left padding, an
    attention mask over later positions. Returns (T, C') outputs."""
    for b in blocks:
        if isinstance(b, DenseBlock):
            prev = F.pad(x, (0, 0, b.dilation, 0))[: len(x)]
            x = torch.cat([x, b.gated(prev, x)], -1)
        else:
            logits = b.query(x) @ b.key(x).T * b.scale
            mask = torch.ones_like(logits, dtype=torch.bool).triu(1)
            if not causal:  # support items see each other; the last item (the query) sees all
                mask[:-1, :-1] = False
            x = torch.cat([x, logits.masked_fill(mask, float("-inf")).softmax(-1) @ b.value(x)], -1)
    return x


@pytest.mark.parametrize("causal", [True, False])
def test_snail_batched_queries_equal_one_sequence_per_query(causal):
    """Every query in one pass gives what the FewRel toolkit computes by copying the support set
    once per query: so a query never sees another query."""
    snail = make(SNAIL, causal=causal)
    s, q = torch.randn(6, 12), torch.randn(4, 12)  # 12 = 8 features + 4 label slots
    batched = s, q
    for b in snail.blocks:
        batched = b(*batched)
    for i in range(len(q)):
        alone = reference_sequence(snail.blocks, torch.cat([s, q[i : i + 1]]), causal)
        assert torch.allclose(alone[-1], batched[1][i], atol=1e-5)
        assert torch.allclose(alone[:-1], batched[0], atol=1e-5)  # the support part never depends on a query


def test_snail_causal_support_items_see_only_earlier_items():
    block = AttentionBlock(5, 3, 2, causal=True)
    s = torch.randn(4, 5, requires_grad=True)
    out_s, _ = block(s, torch.randn(2, 5))
    grad = torch.autograd.grad(out_s[1].sum(), s)[0]
    assert grad[2:].abs().sum() == 0 and grad[:2].abs().sum() > 0
    dense = DenseBlock(5, 3, dilation=2)
    out_s, out_q = dense(s, torch.randn(2, 5))
    grad = torch.autograd.grad(out_s[1].sum(), s)[0]
    assert grad[2:].abs().sum() == 0
    non_causal = AttentionBlock(5, 3, 2, causal=False)
    grad = torch.autograd.grad(non_causal(s, torch.randn(2, 5))[0][0].sum(), s)[0]
    assert (grad.abs().sum(-1) > 0).all()  # permutation-invariant option: item 0 sees every support item


def test_snail_queries_never_see_other_queries():
    snail = make(SNAIL)
    s, q = torch.randn(6, 12), torch.randn(3, 12, requires_grad=True)
    out = (s, q)
    for b in snail.blocks:
        out = b(*out)
    grad = torch.autograd.grad(out[1][0].sum(), q)[0]
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


def test_snail_refuses_more_classes_than_label_slots():
    snail = make(SNAIL)
    with pytest.raises(ConfigError, match="learner.max_way=4 slots, but this episode is 5-way"):
        snail.predict_from_features(torch.randn(5, 8), torch.arange(5), torch.randn(5, 8), 5)


# -- MANN -----------------------------------------------------------------------------------------

def test_least_used_marks_the_least_used_slots_in_order():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.05]])
    assert torch.equal(least_used(usage, 2), torch.tensor([[[0.0, 0, 0, 1], [0, 1, 0, 0]]]))


@pytest.mark.parametrize("binding", ["controller", "explicit"])
def test_mann_lru_writes_the_least_used_slot(binding):
    """Mann lru write goes to the least used slot and reads are convex."""
    mann = make(MANN, binding=binding)
    with torch.no_grad():
        mann.alpha.weight.zero_(), mann.alpha.bias.fill_(-100.0)  # gate 0: write to the least-used slots only
    state = mann.initial_state(1, torch.zeros(1))
    state["usage"] = torch.tensor([[3.0, 0.2, 2.0, 0.1, 5.0, 4.0, 0.3, 6.0]])
    state["w_lu"] = least_used(state["usage"], mann.heads)  # slots 3 and 1
    state["memory"] = torch.randn(1, 8, 5)
    state["prev_x"] = previous = torch.randn(1, 8)
    x = torch.randn(1, 8)
    new, _ = mann.step(state, x, torch.zeros(1, 4))
    changed = (new["memory"] - state["memory"]).abs().sum(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [1, 3]
    keys = mann.keys(new["h"]).view(1, 2, 5)
    if binding == "explicit":  # reads by this item, writes the previous one with the label just given
        writes = (mann.writes(new["h"]) + mann.item_keys(previous)).view(1, 2, 5)
        keys = keys + mann.item_keys(x).view(1, 2, 5)
    else:
        writes = keys
    assert torch.allclose(new["memory"][0, 3], writes[0, 0]) and torch.allclose(new["memory"][0, 1], writes[0, 1])
    w = new["w_read"]
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(1, 2))
    reads = new["read"].view(1, 2, 5)
    assert torch.allclose(reads, w @ new["memory"], atol=1e-6)
    strength = 1 + torch.nn.functional.softplus(mann.strength(new["h"])).unsqueeze(-1)
    assert torch.allclose(cosine_read_weights(keys, new["memory"], strength), w)


def test_mann_explicit_binding_waits_for_a_label():
    """Mann explicit binding writes nothing before the first label."""
    mann = make(MANN)
    state, x = mann.initial_state(1, torch.zeros(1)), torch.randn(1, 8)
    new, _ = mann.step(state, x, torch.zeros(1, 4))
    assert torch.equal(new["memory"], state["memory"]) and torch.equal(new["prev_x"], x)


def test_mann_labels_arrive_one_step_late():
    """Mann labels arrive one step late and queries do not see each other."""
    mann = make(MANN)
    s, q = torch.randn(6, 8), torch.randn(3, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    support_logits, query_logits = mann.run_episode(s, labels, q, torch.arange(3))
    assert support_logits.shape == (6, 3) and query_logits.shape == (3, 3)
    # item 0's prediction is made before any label: changing all labels leaves it unchanged
    other, _ = mann.run_episode(s, torch.tensor([2, 0, 1, 2, 0, 1]), q, torch.arange(3))
    assert torch.allclose(other[0], support_logits[0]) and not torch.allclose(other[1], support_logits[1])
    grad = torch.autograd.grad(query_logits[0].sum(), q)[0]
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


def test_mann_persistent_memory_is_saved():
    """Mann persistent memory stores running class prototypes in the state dict."""
    mann = make(MANN, memory="persistent", bank_momentum=0.5)
    ep = episode_with_classes(d=4)
    mann.train()
    mann.training_loss(ep)
    protos = torch.stack([mann.encoder(ep.support)[ep.support_labels == c].mean(0) for c in range(3)]).detach()
    assert torch.allclose(mann.bank[:3], protos, atol=1e-6) and mann.bank_written.tolist() == [True] * 3 + [False]
    mann.training_loss(ep)  # the same classes again: the running mean of equal prototypes is unchanged
    assert torch.allclose(mann.bank[:3], protos, atol=1e-6)
    assert {"bank", "bank_written"} <= set(mann.trained_state())


def test_mann_bad_options_name_the_choices():
    with pytest.raises(ConfigError, match="learner.memory='global' is not valid; choose one of: episode, persistent"):
        make(MANN, memory="global")
    with pytest.raises(ConfigError, match="learner.binding='late' is not valid; choose one of: explicit, controller"):
        make(MANN, binding="late")
    with pytest.raises(ConfigError, match="learner.key_strength='high' is not valid; choose one of: learned, none"):
        make(MANN, key_strength="high")
    with pytest.raises(ConfigError, match="learner.read_heads=9 cannot exceed learner.slots=8"):
        MANN(FeatureEncoder(4, 8), CLASSES, slots=8, read_heads=9)


# -- Siamese --------------------------------------------------------------------------------------

def test_siamese_score_is_a_weighted_l1_distance():
    """Siamese pair score is a weighted l1 distance and aggregates by mean or max."""
    sia = make(Siamese)
    a, b = torch.randn(2, 8), torch.randn(3, 8)
    expected = torch.stack([torch.stack([(x - y).abs() @ sia.alpha + sia.bias for y in b]) for x in a])
    assert torch.allclose(sia.pair_logits(a, b), expected)
    pairs, labels = torch.tensor([[1.0, 3.0, -2.0, 4.0]]), torch.tensor([0, 0, 1, 1])
    assert torch.equal(sia.class_scores(pairs, labels, 2), torch.tensor([[2.0, 1.0]]))
    sia.aggregate = "max"
    assert torch.equal(sia.class_scores(pairs, labels, 2), torch.tensor([[3.0, 4.0]]))


@pytest.mark.parametrize("hard", [False, True])
def test_siamese_training_pairs_are_balanced(hard):
    sia = make(Siamese, hard_negatives=hard)
    pairs = torch.randn(6, 6)
    same = torch.arange(3).repeat_interleave(2)[:, None] == torch.arange(3).repeat_interleave(2)[None]
    logits, targets = sia.balanced_pairs(pairs, same)
    assert targets.sum() == same.sum() == len(targets) - targets.sum()  # 12 same, 12 different
    if hard:
        assert torch.equal(logits[targets == 0], pairs[~same].topk(12).values)


def test_siamese_nota_is_a_threshold_on_the_best_score():
    sia = make(Siamese, nota=True)
    with torch.no_grad():
        sia.nota_offset.fill_(0.0)
    logits = sia.predict_from_features(torch.randn(6, 8), torch.arange(3).repeat_interleave(2), torch.randn(4, 8), 3)
    assert logits.shape == (4, 4)
    assert torch.equal(logits.argmax(-1) == 3, logits[:, :3].max(-1).values < 0)


# -- Induction ------------------------------------------------------------------------------------

def test_routing_coupling_coefficients_sum_to_one_per_class():
    e_hat = squash(torch.randn(9, 6))
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0, 2])
    classes, d = dynamic_routing(e_hat, labels, 3, iters=3)
    per_class = torch.zeros(3).index_add_(0, labels, d)
    assert torch.allclose(per_class, torch.ones(3)) and (d > 0).all()
    assert (classes.norm(dim=-1) < 1).all()  # squashed
    one_iter, d1 = dynamic_routing(e_hat, labels, 3, iters=1)  # uniform coupling: the squashed mean
    assert torch.allclose(d1, torch.full((9,), 1 / 3))
    assert torch.allclose(one_iter[0], squash(e_hat[labels == 0].mean(0)), atol=1e-6)


def test_squash_keeps_direction_and_bounds_length():
    """Squash keeps direction and maps length to l2 over one plus l2."""
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(squash(x), x / 5 * 25 / 26)


def test_low_rank_tensor_equals_its_full_product():
    ind = make(InductionNet, tensor_rank=3, relation_dim=5)
    full = make(InductionNet, tensor_rank=None, relation_dim=5)
    with torch.no_grad():
        full.tensor.copy_(torch.einsum("dhr,ehr->hde", ind.u, ind.v))
        full.score.load_state_dict(ind.score.state_dict())
    c, q = torch.randn(3, 8), torch.randn(4, 8)
    assert torch.allclose(ind.relation(c, q), full.relation(c, q), atol=1e-5)
    n_params = lambda m: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("encoder"))  # noqa: E731
    assert n_params(ind) < n_params(full)
    assert math.prod(full.tensor.shape) == 5 * 8 * 8


def test_induction_bad_options_are_named():
    with pytest.raises(ConfigError, match=r"learner.tensor_rank=0 is not valid; it must be a whole number of at "
                                          r"least 1 \(or null for the full tensor\)"):
        make(InductionNet, tensor_rank=0)
    with pytest.raises(ConfigError, match="learner.aggregate='median' is not valid; choose one of: mean, max"):
        make(Siamese, aggregate="median")


# -- episode feature normalisation (SNAIL, MANN) --------------------------------------------------


def test_center_l2_centres_and_normalises():
    """Center l2 removes the support mean and scales to unit length."""
    from metarun.learners.functional import normalize_episode

    torch.manual_seed(0)
    shared = 5 * torch.randn(1, 8)  # the direction every sentence embedding of a frozen encoder shares
    support, query = shared + torch.randn(6, 8), shared + torch.randn(3, 8)
    s, q = normalize_episode(support, query, "center_l2")
    mean = support.mean(0, keepdim=True)
    torch.testing.assert_close(s, F.normalize(support - mean, dim=-1))
    torch.testing.assert_close(q, F.normalize(query - mean, dim=-1))  # centred on the support mean, not its own
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(6))
    s, q = normalize_episode(support, query, "l2")
    torch.testing.assert_close(q, F.normalize(query, dim=-1))
    s, q = normalize_episode(support, query, "none")
    assert s is support and q is query


@pytest.mark.parametrize("kind", [SNAIL, MANN])
def test_feature_norm_is_applied_and_checked(kind):
    ep = episode_with_classes(k=2, d=4)
    shifted = episode_with_classes(k=2, d=4)
    with torch.no_grad():
        learner = make(kind).eval()
        s, q = learner.embed_episode(ep)
        base = learner.predict_from_features(s, ep.support_labels, q, ep.n_way)
        moved = learner.predict_from_features(3 * (s + 10), shifted.support_labels, 3 * (q + 10), ep.n_way)
    torch.testing.assert_close(moved, base, rtol=1e-4, atol=1e-5)  # center_l2: a shift and a scale change nothing
    with pytest.raises(
        ConfigError, match="learner.feature_norm='zscore' is not valid; choose one of: none, l2, center_l2"
    ):
        make(kind, feature_norm="zscore")
