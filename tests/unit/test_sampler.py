import numpy as np
import pytest

from metarun.data.dataset import Example, FewShotDataset
from metarun.data.sampler import EpisodeSampler
from metarun.errors import DataError


def make_data(counts: dict[str, int]) -> FewShotDataset:
    return FewShotDataset(tuple(Example(f"{c} {i}", c) for c, n in counts.items() for i in range(n)), "toy.tsv")


DATA = make_data({f"c{i}": 10 + i for i in range(8)})


def test_episode_is_pure_function_of_seed_and_index():
    a, b = EpisodeSampler(DATA, 5, 2, 3, seed=7), EpisodeSampler(DATA, 5, 2, 3, seed=7)
    assert [a[i] for i in range(20)] == [b[i] for i in reversed(range(20))][::-1]
    assert a[3] == b[3] and a[3] != a[4]
    assert EpisodeSampler(DATA, 5, 2, 3, seed=8)[3] != a[3]


def test_balance_labels_and_disjointness():
    s = EpisodeSampler(DATA, 4, 3, 2, seed=0)
    for i in range(50):
        ep = s[i]
        assert len(set(ep.classes)) == 4
        assert len(ep.support_idx) == 12 and len(ep.query_idx) == 8
        assert not set(ep.support_idx) & set(ep.query_idx)
        assert len(set(ep.support_idx)) == 12 and len(set(ep.query_idx)) == 8
        for j, idx in enumerate(ep.support_idx):
            assert DATA[idx].label == ep.classes[ep.support_labels()[j]]
        for j, idx in enumerate(ep.query_idx):
            assert DATA[idx].label == ep.classes[ep.query_labels()[j]]
        assert np.bincount(ep.query_labels()).tolist() == [2] * 4


def test_classes_are_covered_roughly_uniformly():
    s = EpisodeSampler(DATA, 2, 1, 1, seed=0)
    counts = np.zeros(8)
    for i in range(2000):
        for c in s[i].classes:
            counts[int(c[1:])] += 1
    assert counts.min() > 0.8 * counts.mean()


def test_too_many_ways_is_a_clear_error():
    with pytest.raises(DataError, match=r"10-way.*only 8 classes.*n_way"):
        EpisodeSampler(DATA, 10, 1, 1, seed=0)


def test_class_with_too_few_examples_is_named():
    data = make_data({"a": 10, "b": 10, "tiny_class": 3})
    with pytest.raises(DataError, match=r"K\+Q = 2\+5 = 7.*toy.tsv.*'tiny_class' has 3"):
        EpisodeSampler(data, 2, 2, 5, seed=0)


@pytest.mark.parametrize("bad", [{"n_way": 0}, {"k_shot": -1}, {"n_query": 0}])
def test_non_positive_sizes_rejected(bad):
    kw = {"n_way": 2, "k_shot": 1, "n_query": 1, **bad}
    with pytest.raises(Exception, match=list(bad)[0]):
        EpisodeSampler(DATA, seed=0, **kw)


def test_k0_episodes_are_for_evaluation_only():
    """K = 0 (class names alone): an empty support set and Q queries per class at evaluation; the
    training sampler refuses it."""
    ep = EpisodeSampler(DATA, 5, 0, 3, seed=0, role="test")[0]
    assert ep.support_idx == () and len(ep.query_idx) == 15 and ep.support_labels().shape == (0,)
    assert ep.query_labels().tolist() == [c for c in range(5) for _ in range(3)]
    with pytest.raises(Exception, match="sampler.k_shot=0 is not valid; it must be a whole number of at least 1"):
        EpisodeSampler(DATA, 5, 0, 3, seed=0)
