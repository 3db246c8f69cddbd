"""Relation classification: the FewRel split, the CNN encoder, single-query episodes, Matching,
Relation and pair learners."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from conftest import FEWREL_VAL, REPO, FeatureEncoder
from metarun.data.dataset import Example, FewShotDataset
from metarun.data.fewrel import load_fewrel_split
from metarun.data.collate import Episode
from metarun.data.sampler import EpisodeSampler
from metarun.errors import ConfigError, DataError
from metarun.learners.base import NOTA_LR
from metarun.learners.metric.matching import MatchingNet
from metarun.learners.metric.pair import PairNet, pair_batch
from metarun.learners.metric.relation import RelationNet

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def test_val_split_holds_out_instances_of_training_relations(fewrel_file):
    root = fewrel_file.parent
    (root / "pid2name.json").write_text(json.dumps({"P100": ["crosses", "..."], "P103": ["spouse", "..."]}))
    d = load_fewrel_split("s", str(root), "val_wiki.json", ["P100", "P101"], ["P103", "P104", "P105"], val_per_class=4)
    assert d.train.classes == d.val.classes == ["P100", "P101"] and d.test.classes == ["P103", "P104", "P105"]
    assert (len(d.train), len(d.val), len(d.test)) == (16, 8, 36)
    assert d.class_names["P103"] == "spouse"
    again = load_fewrel_split("s", str(root), "val_wiki.json", ["P100", "P101"], ["P103"], val_per_class=4)
    assert again.val.examples == d.val.examples
    with pytest.raises(ConfigError, match=r"\['P101'\] are both training and test"):
        load_fewrel_split("s", str(root), "val_wiki.json", ["P100", "P101"], ["P101"])
    with pytest.raises(DataError, match="relation P100 .* has 12 instances, too few"):
        load_fewrel_split("s", str(root), "val_wiki.json", ["P100"], ["P103"], val_per_class=12)
    with pytest.raises(DataError, match=r"relations \['P999'\] are not in FewRel file"):
        load_fewrel_split("s", str(root), "val_wiki.json", ["P999"], ["P103"])


def test_real_val_split_when_available():
    if not FEWREL_VAL.exists():
        pytest.skip("../shared/data/fewrel is not present")
    from conftest import compose_cfg
    from metarun.config import build

    d = build(compose_cfg(["data=fewrel_val_split", f"data.root={FEWREL_VAL.parent}"]).data, "data")
    assert (len(d.train.classes), len(d.test.classes), len(d.train), len(d.val), len(d.test)) == (
        6,
        10,
        3600,
        600,
        7000,
    )
    assert d.class_names["P26"] == "spouse"


def test_cnn_positions_count_from_the_entities():
    """Cnn positions count from the entities and padding is ignored."""
    from metarun.models.cnn import CNNEncoder

    torch.manual_seed(0)
    enc = CNNEncoder(init="random", word_dim=8, hidden=6, max_length=16)
    e = Example("x", "P1", tokens=("the", "bridge", "crosses", "the", "river", "Thames"), head=(1, 1), tail=(4, 5))
    long = Example("y", "P1", tokens=tuple("a b c d e f g h i j k l".split()), head=(0, 0), tail=(11, 11))
    batch = enc.tokenize([e, long])
    offset = 16 - 1
    assert (batch["head_pos_ids"][0, :6] - offset).tolist() == [-1, 0, 1, 2, 3, 4]
    assert (batch["tail_pos_ids"][0, :6] - offset).tolist() == [-4, -3, -2, -1, 0, 1]
    assert batch["attention_mask"][0].sum() == 6 and batch["attention_mask"][1].sum() == 12
    alone = enc(enc.tokenize([e]))
    assert enc(batch).shape == (2, 6) and torch.allclose(enc(batch)[0], alone[0], atol=1e-6)
    with pytest.raises(ConfigError, match="encoder=cnn reads relation instances"):
        enc.tokenize([Example("plain sentence", "a")])
    with pytest.raises(ConfigError, match="pretrained, random"):
        CNNEncoder(init="glove")


def test_single_query_episodes_hold_one_query_of_a_uniform_class():
    data = FewShotDataset(tuple(Example(f"{c} {i}", c) for c in "abcdef" for i in range(8)), "toy")
    sampler = EpisodeSampler(data, n_way=5, k_shot=2, n_query=1, seed=12345, single_query=True)
    targets = []
    for i in range(300):
        spec = sampler[i]
        assert len(spec.support_idx) == 10 and len(spec.query_idx) == 1
        label = int(spec.query_labels()[0])
        assert data[spec.query_idx[0]].label == spec.classes[label] and spec.query_idx[0] not in spec.support_idx
        targets.append(label)
    assert np.bincount(targets, minlength=5).min() > 40  # about 60 each
    assert sampler[7] == EpisodeSampler(data, 5, 2, 1, seed=12345, single_query=True)[7]


def test_official_protocol_config_makes_four_settings():
    from conftest import compose_cfg
    from metarun.config import build
    from metarun.evaluate import EpisodicEvaluator, build_evaluator

    cfg = compose_cfg(["eval=fewrel_official"])  # on BANKING77's 27 test classes: enough for 10-way
    ev = build_evaluator(cfg.eval, "test", build(cfg.data, "data"), progress=False)
    assert isinstance(ev, EpisodicEvaluator)
    keys = [(p.key, p.episodes, p.seed, p.single_query) for p in ev.protocols]
    assert keys == [(k, 10000, 12345, True) for k in ("5way_1shot", "5way_5shot", "10way_1shot", "10way_5shot")]


def feature_episode(n_way=3, k=2, q=2, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_way, dim, generator=g) * 3
    ys, yq = torch.arange(n_way).repeat_interleave(k), torch.arange(n_way).repeat_interleave(q)
    xs = centers[ys] + 0.1 * torch.randn(len(ys), dim, generator=g)
    xq = centers[yq] + 0.1 * torch.randn(len(yq), dim, generator=g)
    return Episode(xs, ys, xq, yq, n_way)


def test_matching_net_is_an_attention_weighted_label_vote():
    learner = MatchingNet(torch.nn.Identity(), scale=5.0)
    learner.encoder.out_dim = 5
    ep = feature_episode()
    log_p = learner.predict(ep)
    attention = torch.softmax(
        5.0 * torch.nn.functional.normalize(ep.query, dim=-1) @ torch.nn.functional.normalize(ep.support, dim=-1).T, -1
    )
    expected = torch.stack([attention[:, ep.support_labels == c].sum(1) for c in range(3)], 1)
    assert torch.allclose(log_p.exp(), expected, atol=1e-6) and torch.allclose(log_p.exp().sum(1), torch.ones(6))
    assert (log_p.argmax(1) == ep.query_labels).all()


@pytest.mark.parametrize("cls", [MatchingNet, RelationNet])
def test_metric_learners_train_every_parameter(cls):
    torch.manual_seed(0)
    learner = cls(FeatureEncoder(5, 4))
    out = learner.training_loss(feature_episode())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    scores = learner.predict(feature_episode(seed=1))
    assert scores.shape == (6, 3)
    if cls is RelationNet:
        assert ((scores > 0) & (scores < 1)).all()
        slow, fast = learner.param_groups(1e-5)
        assert fast["lr"] == 1e-3 and len(fast["params"]) == 4


def test_pair_batch_joins_support_and_query():
    """Pair batch joins support and query without the query cls."""
    s = {
        "input_ids": torch.tensor([[101, 5, 6, 102], [101, 7, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    q = {"input_ids": torch.tensor([[101, 9, 102]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    out = pair_batch(s, q)
    assert out["input_ids"].tolist() == [[101, 5, 6, 102, 9, 102], [101, 7, 102, 9, 102, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]
    assert out["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0]]


def test_pair_net_averages_over_shots_and_trains():
    """Pair net averages same scores over shots and trains every parameter."""
    from metarun.models.encoders import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(pretrained=False, config_overrides=TINY, pooling="cls")
    learner = PairNet(enc, pair_batch_size=5)
    words = "river bridge city company founded born player team".split()
    support = [Example(f"{w} one", str(i // 2)) for i, w in enumerate(words[:6])]  # 3-way 2-shot
    query = [Example(f"{w} two", str(i)) for i, w in enumerate(words[:3])]
    ep = Episode(
        enc.tokenize(support), torch.tensor([0, 0, 1, 1, 2, 2]), enc.tokenize(query), torch.tensor([0, 1, 2]), 3
    )
    learner.eval()
    logits = learner.predict(ep)
    pairs = pair_batch(ep.support, ep.query)
    same = learner.classifier(enc.model(**pairs).last_hidden_state[:, 0])[:, 1].view(3, 6)
    assert torch.allclose(logits, same.view(3, 3, 2).mean(-1), atol=1e-5)
    learner.nota = True  # NOTA logit: the smallest class-mean "different" score
    different = learner.classifier(enc.model(**pairs).last_hidden_state[:, 0])[:, 0].view(3, 3, 2).mean(-1)
    assert torch.allclose(learner.predict(ep)[:, 3], different.min(-1).values, atol=1e-5)
    learner.nota = False
    learner.train()
    out = learner.training_loss(ep)
    out.loss.backward()
    for name, p in learner.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name


def test_nota_queries_come_from_classes_outside_the_episode():
    data = FewShotDataset(tuple(Example(f"{c} {i}", c) for c in "abcdef" for i in range(8)), "toy")
    sampler = EpisodeSampler(data, n_way=3, k_shot=1, n_query=2, seed=0, na_rate=2)
    for i in range(20):
        spec = sampler[i]
        labels = spec.query_labels()
        assert len(spec.query_idx) == 6 + 4 and labels.tolist()[-4:] == [3, 3, 3, 3]
        assert all(data[j].label not in spec.classes for j in spec.query_idx[-4:])
    assert sampler[3] == EpisodeSampler(data, 3, 1, 2, seed=0, na_rate=2)[3]
    with pytest.raises(DataError, match="only 6 classes for 6-way"):
        EpisodeSampler(data, n_way=6, k_shot=1, n_query=1, seed=0, na_rate=1)
    with pytest.raises(ConfigError, match="single_query"):
        EpisodeSampler(data, n_way=3, k_shot=1, n_query=1, seed=0, na_rate=1, single_query=True)


@pytest.mark.parametrize("cls", ["protonet", "matching", "relation"])
def test_nota_is_an_extra_class_with_a_learned_offset(cls):
    from metarun.learners.metric.protonet import ProtoNet

    make = {"protonet": ProtoNet, "matching": MatchingNet, "relation": RelationNet}[cls]
    torch.manual_seed(0)
    learner = make(FeatureEncoder(5, 4), nota=True)
    ep = feature_episode()
    ep = Episode(
        ep.support,
        ep.support_labels,
        torch.cat([ep.query, 5 * torch.randn(2, 5)]),
        torch.cat([ep.query_labels, torch.tensor([3, 3])]),
        3,
    )
    out = learner.training_loss(ep)
    out.loss.backward()
    assert learner.predict(ep).shape == (8, 4) and learner.nota_offset.grad.abs() > 0
    groups = learner.param_groups(1e-5)
    assert [g["lr"] for g in groups if any(p is learner.nota_offset for p in g["params"])] == [NOTA_LR]
    assert sum(p is learner.nota_offset for g in groups for p in g["params"]) == 1  # in one group only


def test_the_nota_offset_learns_to_fire_within_a_short_run():
    """The offset's own group moves it across logit gaps of a few units in tens of steps: queries whose
    best class stands 8 above the others are kept, queries whose classes lie within 2 of each other
    go to NOTA (at the old rate, 1e-3, the offset stayed below 0.1 and NOTA never won)."""
    from metarun.learners.base import with_nota
    from metarun.learners.metric.protonet import ProtoNet

    torch.manual_seed(0)
    learner = ProtoNet(FeatureEncoder(5, 4), nota=True)
    kept = torch.randn(40, 5)
    kept[torch.arange(40), torch.arange(40) % 5] += 8.0     # one class stands out
    flat = 2 * torch.rand(40, 5)                            # no class stands out
    logits, labels = torch.cat([kept, flat]), torch.cat([torch.arange(40) % 5, torch.full((40,), 5)])
    groups = learner.param_groups(1e-5)
    opt = torch.optim.Adam([g for g in groups if any(p is learner.nota_offset for p in g["params"])])
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(with_nota(logits, learner.nota_offset), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = with_nota(logits, learner.nota_offset).argmax(-1)
    assert (pred[40:] == 5).float().mean() > 0.9 and (pred[:40] == labels[:40]).float().mean() > 0.9


def test_download_helper_never_leaves_half_files(fewrel_file, tmp_path):
    """Download helper fetches checks and never leaves half files."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "download_fewrel", REPO / "scripts" / "download_fewrel.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = fewrel_file.parent  # a "remote" folder served through file:// URLs
    (server / "pid2name.json").write_text(json.dumps({"P100": ["crosses", "..."]}))
    (server / "broken.json").write_text('{"P1": [{"tokens": []}]}')
    dest = tmp_path / "data" / "fewrel"
    code = module.main(
        ["--dest", str(dest), "--base-url", server.as_uri(), "--files", "val_wiki.json", "pid2name.json"]
    )
    assert code == 0 and read_fewrel_count(dest / "val_wiki.json") == 6 and (dest / "pid2name.json").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE((dest / n).stat().st_mode) == 0o666 & ~umask for n in ("val_wiki.json", "pid2name.json"))
    assert (
        module.main(["--dest", str(dest), "--base-url", server.as_uri(), "--files", "broken.json", "missing.json"]) == 1
    )
    assert sorted(p.name for p in dest.iterdir()) == ["pid2name.json", "val_wiki.json"]  # nothing half-written


def read_fewrel_count(path):
    from metarun.data.fewrel import read_fewrel

    return len(read_fewrel(path).classes)
