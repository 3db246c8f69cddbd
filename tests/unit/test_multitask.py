"""Multi-task learning: loss weightings against hand computations, task sampling, the learner, data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarun.data.dataset import DataSplits, Example, FewShotDataset
from metarun.data.multitask import load_multitask
from metarun.data.collate import Episode
from metarun.data.sampler import MultiTaskSampler, task_probabilities
from metarun.errors import ConfigError, DataError
from metarun.learners.transfer.mtl import (
    dwa_weights,
    gradnorm_loss,
    pcgrad,
    uncertainty_weighted,
)
from metarun.learners.transfer.multitask import MultiTask
from conftest import FeatureEncoder


def test_pcgrad_projects_only_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # dot = -1: conflict
    # g1' = g1 - (g1.g2)/|g2|^2 g2 = (1,0) + 0.5 (-1,1) = (0.5, 0.5); g2' = g2 - (-1)/1 g1 = (0, 1)
    assert torch.allclose(pcgrad([g1, g2]), torch.tensor([0.5, 1.5]))
    g3 = torch.tensor([1.0, 1.0])  # no conflict with g1: plain sum
    assert torch.allclose(pcgrad([g1, g3]), g1 + g3)
    for a, b in ((g1, g2), (g2, g1)):  # each projected gradient no longer conflicts with the other task
        projected = a - min(0.0, float(a @ b)) / float(b @ b) * b
        assert projected @ b >= -1e-6


def test_uncertainty_weighting_matches_the_formula():
    losses, s = torch.tensor([2.0, 0.5]), torch.tensor([0.0, math.log(4.0)])
    expected = 2.0 / 2 + 0.0 + 0.5 / (2 * 4) + math.log(4.0) / 2
    assert uncertainty_weighted(losses, s).item() == pytest.approx(expected)
    s.requires_grad_()
    uncertainty_weighted(losses, s).backward()  # d/ds = -L/(2 e^s) + 1/2
    assert torch.allclose(s.grad, torch.tensor([-1.0 + 0.5, -0.5 / 8 + 0.5]))


def test_dwa_weights_follow_loss_ratios():
    previous, before = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])  # ratios 0.5 and 1.0
    w = dwa_weights(previous, before, temperature=2.0)
    e = np.exp([0.25, 0.5])
    assert torch.allclose(w, torch.tensor(2 * e / e.sum(), dtype=torch.float32))
    assert w.sum().item() == pytest.approx(2.0) and w[1] > w[0]  # the slower task gets more weight


def test_gradnorm_loss_and_its_gradient_on_the_weights():
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    norms, losses, init = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])
    # G = (2, 1), mean 1.5; rates L/L0 = (1, 0.5) / 0.75 = (4/3, 2/3); alpha=1: target = (2, 1)
    loss = gradnorm_loss(w, norms, losses, init, alpha=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    w2 = torch.tensor([2.0, 1.0], requires_grad=True)  # G = (4, 1), mean 2.5, target (10/3, 5/3)
    loss = gradnorm_loss(w2, norms, losses, init, alpha=1.0)
    assert loss.item() == pytest.approx(abs(4 - 10 / 3) + abs(1 - 5 / 3), abs=1e-5)
    loss.backward()
    assert torch.allclose(w2.grad, torch.tensor([2.0, -1.0]))  # sign(G - target) * norm


def test_task_probabilities():
    sizes = [100, 400, 10000]
    assert np.allclose(task_probabilities(sizes, "uniform"), 1 / 3)
    assert np.allclose(task_probabilities(sizes, "proportional"), np.array(sizes) / 10500)
    p = task_probabilities(sizes, "temperature", temperature=2.0, cap=1600)
    assert np.allclose(p, np.array([10, 20, 40]) / 70)  # sqrt of (100, 400, min(10000, 1600))


def multitask_data(sizes=(40, 20, 10)) -> FewShotDataset:
    return FewShotDataset(tuple(Example(f"{t}{c} {i}", f"t{t}/c{c}") for t, n in enumerate(sizes)
                                for c in range(2) for i in range(n)), "toy multi-task")


def test_one_task_steps_follow_the_sampling_distribution():
    data = multitask_data()
    sampler = MultiTaskSampler(data, batch_size=4, seed=0, tasks_per_step="one", sampling="proportional")
    counts = {t: 0 for t in sampler.tasks}
    for i in range(3000):
        spec = sampler[i]
        (task, start, end), = spec.slices
        counts[task] += 1
        assert end - start == 4 and all(data[j].label.startswith(task + "/") for j in spec.support_idx)
    freq = np.array([counts[t] for t in sampler.tasks]) / 3000
    assert np.allclose(freq, [80 / 140, 40 / 140, 20 / 140], atol=0.03)
    assert sampler[7] == MultiTaskSampler(data, 4, 0, "one", "proportional")[7]


def test_all_task_steps_hold_one_batch_per_task_with_task_labels():
    data = multitask_data()
    spec = MultiTaskSampler(data, batch_size=5, seed=1)[3]
    assert [s[0] for s in spec.slices] == ["t0", "t1", "t2"]
    for task, start, end in spec.slices:
        for j, label in zip(spec.support_idx[start:end], spec.labels[start:end]):
            assert data[j].label == f"{task}/c{label}"
    with pytest.raises(ConfigError, match="uniform, proportional, temperature"):
        MultiTaskSampler(data, 4, 0, sampling="round_robin")
    with pytest.raises(DataError, match="'t2' has 20"):
        MultiTaskSampler(data, 25, 0)


def mt_episode(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0, 2, 0, 1, 2])
    return Episode(x, y, None, torch.zeros(0, dtype=torch.long), n_way=7,
                   meta={"index": 0, "tasks": (("a", 0, 4), ("b", 4, 8), ("c", 8, 12))})


CLASSES = ["a/x", "a/y", "b/x", "b/y", "c/x", "c/y", "c/z"]


@pytest.mark.parametrize("weighting", ["ew", "uw", "dwa", "gradnorm", "pcgrad"])
def test_every_weighting_trains_every_parameter(weighting):
    torch.manual_seed(0)
    learner = MultiTask(FeatureEncoder(3, 4), CLASSES, weighting=weighting)
    out = learner.training_loss(mt_episode())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_pcgrad_surrogate_gives_the_projected_grad():
    """Pcgrad surrogate hands the projected gradient to the encoder."""
    torch.manual_seed(0)
    learner = MultiTask(FeatureEncoder(3, 4), CLASSES, weighting="pcgrad")
    ep = mt_episode()
    feats = learner.encoder(ep.support)
    losses, _, _ = learner._task_losses(feats, ep)
    shared = list(learner.encoder.parameters())
    flat = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
    expected = pcgrad(flat, torch.Generator().manual_seed(0))
    ew_value = losses.sum().item()
    learner.zero_grad()
    out = learner.training_loss(ep)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(ew_value, rel=1e-6)  # the value reported is the plain sum
    assert torch.allclose(torch.cat([p.grad.flatten() for p in shared]), expected, atol=1e-6)


def test_multitask_needs_multitask_batches():
    learner = MultiTask(FeatureEncoder(3, 4), CLASSES)
    ep = mt_episode()
    with pytest.raises(ConfigError, match="sampler=multitask"):
        learner.training_loss(Episode(ep.support, ep.support_labels, None, ep.query_labels, 7, meta={}))
    with pytest.raises(ConfigError, match="ew, uw, dwa, gradnorm, pcgrad"):
        MultiTask(FeatureEncoder(3, 4), CLASSES, weighting="nash")


def splits(name, classes, per_class=10):
    ex = tuple(Example(f"{name} {c} {i}", c) for c in classes for i in range(per_class))
    data = FewShotDataset(ex, name)
    return DataSplits(name, data.subset(classes[:2]), data.subset(classes[2:3]), data.subset(classes[3:]))


def test_multitask_data_prefixes_labels_and_holds_out_examples():
    data = load_multitask("two", {"x": splits("x", ["a", "b", "c", "d"]), "y": splits("y", ["e", "f", "g", "h"])},
                          target="x", heldout_fraction=0.2)
    assert data.train.classes == ["x/a", "x/b", "y/e", "y/f"]
    assert data.test.classes == ["d"] and data.val.classes == ["c"]
    assert {t: len(d) for t, d in data.heldout.items()} == {"x": 4, "y": 4}
    heldout = {e.text for d in data.heldout.values() for e in d.examples}
    assert len(data.train) == 32 and not {e.text for e in data.train.examples} & heldout
    with pytest.raises(ConfigError, match="not one of the sources"):
        load_multitask("two", {"x": splits("x", ["a", "b", "c", "d"])}, target="z")


def test_leave_one_dataset_out_uses_the_others():
    """Leave one dataset out trains on every class of the other sources."""
    sources = {n: splits(n, [f"{n}{i}" for i in range(4)]) for n in ("x", "y", "z")}
    data = load_multitask("loo", sources, target="x", heldout_fraction=0.0, train_on_target=False, source_classes="all")
    assert data.train.classes == [f"{t}/{t}{i}" for t in ("y", "z") for i in range(4)]
    assert data.test.classes == ["x3"] and data.val.classes == ["x2"] and set(data.heldout) == {"y", "z"}
    with pytest.raises(ConfigError, match=r"at least two training tasks.*\['y'\]"):
        load_multitask("loo", {k: sources[k] for k in ("x", "y")}, target="x", train_on_target=False)
    with pytest.raises(ConfigError, match="train, all"):
        load_multitask("loo", sources, target="x", source_classes="some")


def tiny_transformer(layers=3):
    from metarun.models.encoders import TransformerEncoder

    cfg = {"hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": 64}
    return TransformerEncoder(pretrained=False, config_overrides=cfg, max_length=16)


def test_cross_stitch_towers_mix_by_alpha():
    """Cross stitch towers start from the encoder and mix by alpha."""
    from metarun.models.cross_stitch import CrossStitchEncoder

    torch.manual_seed(0)
    enc = tiny_transformer().eval()
    cs = CrossStitchEncoder(enc, ["a", "b", "c"], tower_layers=2).eval()
    assert torch.allclose(cs.stitch[0], torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    batch = enc.tokenize([Example("a longer sentence with padding after it", "x"), Example("short", "y")])
    with torch.no_grad():
        towers = cs.towers(batch)  # identical towers: any stochastic mixing leaves the encoder's function
        assert towers.shape == (3, 2, 32) and torch.allclose(towers, enc(batch).expand(3, -1, -1), atol=1e-5)
        w = cs.stages[0][1].encoder.layer[0].output.dense.weight
        w.add_(torch.randn_like(w))  # tower b's first layer now differs
        for alpha in cs.stitch:
            alpha.copy_(torch.eye(3))
        towers = cs.towers(batch)
        assert torch.allclose(towers[0], enc(batch), atol=1e-5) and not torch.allclose(towers[1], enc(batch))
        for alpha in cs.stitch:
            alpha.fill_(1 / 3)  # full mixing: every tower sees the same mixture
        towers = cs.towers(batch)
        assert torch.allclose(towers[0], towers[1], atol=1e-5) and torch.allclose(cs(batch), towers.mean(0))
    with pytest.raises(ConfigError, match="tower_layers=4 must be between 1 and the encoder's 3"):
        CrossStitchEncoder(enc, ["a", "b"], tower_layers=4)
    with pytest.raises(ConfigError, match="eval_tower='z'.*a, b"):
        CrossStitchEncoder(enc, ["a", "b"], eval_tower="z")
    with pytest.raises(ConfigError, match="has one task"):
        MultiTask(enc, ["a/x", "a/y"], sharing="cross_stitch")
    with pytest.raises(ConfigError, match="hard, cross_stitch"):
        MultiTask(enc, CLASSES, sharing="soft")


@pytest.mark.parametrize("weighting", ["ew", "gradnorm", "pcgrad"])
def test_cross_stitch_multitask_trains_every_tower_and_unit(weighting):
    torch.manual_seed(0)
    learner = MultiTask(tiny_transformer(), CLASSES, weighting=weighting, sharing="cross_stitch", tower_layers=1)
    texts = [f"sentence {i} about {w}" for i, w in enumerate("abcdefghijkl")]
    batch = learner.encoder.tokenize([Example(t, "x") for t in texts])
    episode = mt_episode()
    episode = Episode(batch, episode.support_labels, None, episode.query_labels, episode.n_way, episode.meta)
    out = learner.training_loss(episode)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name, p in learner.named_parameters():
        if "pooler" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    slow, fast = learner.param_groups(1e-5)
    assert any(p is learner.encoder.stitch[0] for p in fast["params"]) and fast["lr"] == 1e-3
    assert not any(p is learner.encoder.stitch[0] for p in slow["params"])
