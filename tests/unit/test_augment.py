"""Offline augmentations (data/augment.py) against hand computations with scripted random draws, and
the consistency loss of augmented views (learners/objectives/consistency.py) against a hand computation."""

import math

import numpy as np
import pytest
import torch

from metarun.data.augment import TokenNeighbours, augment, cutoff, delete, insert, replace, swap
from metarun.learners.objectives.consistency import AugmentedViews, Consistency


class Script:
    """A stand-in for numpy's Generator that returns the draws a test writes down, in order."""

    def __init__(self, randoms=(), ints=(), choices=()):
        self.randoms, self.ints, self.choices = list(randoms), list(ints), list(choices)

    def random(self, n):
        values = self.randoms.pop(0)
        assert len(values) == n
        return np.array(values)

    def integers(self, high):
        value = self.ints.pop(0)
        assert 0 <= value < high
        return value

    def choice(self, n, size, replace):
        return np.array(self.choices.pop(0))


NEAR = {1: [10, 11], 3: [30, 31]}.__getitem__


def test_deletion_drops_tokens_drawn_below_p():
    assert delete([10, 11, 12, 13], Script(randoms=[[0.05, 0.5, 0.09, 0.8]]), 0.1) == [11, 13]
    assert delete([10, 11], Script(randoms=[[0.0, 0.0]], ints=[1]), 0.1) == [11]  # never empty: one token stays


def test_swap_exchanges_the_drawn_positions():
    assert swap([1, 2, 3, 4], Script(choices=[[0, 3], [1, 2]]), 2) == [4, 3, 2, 1]
    assert swap([7], Script(), 3) == [7]


def test_insertion_adds_a_neighbour_of_a_sentence_token():
    # token index 2 (token 3), position 0, neighbour 1 of token 3 (31)
    assert insert([1, 2, 3], Script(ints=[2, 0, 1]), 1, NEAR) == [31, 1, 2, 3]


def test_replacement_takes_neighbours_of_drawn_tokens():
    assert replace([1, 2, 3], Script(randoms=[[0.05, 0.5, 0.01]], ints=[0, 1]), 0.1, NEAR) == [10, 2, 31]


def test_cutoff_removes_one_span():
    assert cutoff(list(range(1, 11)), Script(ints=[4]), 0.3) == [1, 2, 3, 4, 8, 9, 10]  # span 3 from index 4
    assert cutoff([5], Script(), 0.3) == [5]
    assert cutoff([5, 6], Script(ints=[1]), 0.9) == [5]  # at least one token stays


def test_strength_sets_counts_and_probabilities():
    tokens = list(range(20))
    assert augment(tokens, "swap", Script(choices=[[0, 1], [2, 3]]), 0.1, NEAR) == [1, 0, 3, 2, *range(4, 20)]
    assert augment(tokens, "cutoff", Script(ints=[0]), 0.1, NEAR) == list(range(2, 20))
    with pytest.raises(ValueError, match="unknown augmentation 'shuffle'"):
        augment(tokens, "shuffle", Script(), 0.1, NEAR)


def test_neighbours_are_nearest_by_cosine_skipping_excluded():
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.2]])
    near = TokenNeighbours(table, excluded=[1], k=2)
    assert near(0) == [4, 2]  # itself and the excluded token 1 left out; 4 is nearest by angle, not length
    assert near(3) == [2, 4]  # cosines 0, -0.995 (token 4), -1 (token 0)


def views_for_tests(views=2, sentences=2) -> AugmentedViews:
    aug = AugmentedViews.__new__(AugmentedViews)  # no encoder: the parts the loss reads, set by hand
    aug.augmentations, aug.views, aug.sentences, aug.strength = ["swap"], views, sentences, 0.5
    aug.cls, aug.sep, aug.pad, aug.max_length = 101, 102, 0, 8
    aug.neighbours, aug.markers = NEAR, None
    return aug


def test_views_of_relation_instances_keep_their_markers_and_positions():
    """Entity-start pooling reads [E1] and [E2]: every view keeps all four markers (an augmentation that
    cut one is drawn again, three times, then the original is used) and carries head_pos / tail_pos."""
    aug = views_for_tests(views=20)
    aug.augmentations, aug.max_length, aug.markers = ["delete", "swap", "cutoff"], 64, [201, 202, 203, 204]
    aug.strength = 0.1
    row = [201, 5, 202, *range(10, 30), 203, 8, 204, 9]  # [E1] 5 [/E1] 10 .. 29 [E2] 8 [/E2] 9
    batch = aug.views_of([row], np.random.default_rng(0))
    ids = batch["input_ids"]
    for view, head, tail in zip(ids, batch["head_pos"], batch["tail_pos"]):
        assert all((view == m).sum() == 1 for m in aug.markers)
        assert view[head] == 201 and view[tail] == 203
    assert any(len(v[v != 0]) < len(row) + 2 for v in ids)  # some views did lose tokens


def test_views_are_framed_and_padded():
    batch = views_for_tests(views=3).views_of([[5, 6, 7, 8, 9, 10, 11, 12], [5]], np.random.default_rng(0))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (6, 8) and (ids[:, 0] == 101).all()  # 2 rows x 3 views; max_length 8 cuts row 0 to 6
    assert set(ids[0, 1:7].tolist()) <= set(range(5, 13)) and ids[0, 7] == 102  # 6 of its tokens, then [SEP]
    assert mask[:3].sum(1).tolist() == [8, 8, 8] and mask[3:].sum(1).tolist() == [3, 3, 3]
    assert ids[3].tolist() == [101, 5, 102, 0, 0, 0, 0, 0]  # a one-token sentence cannot be swapped


def test_consistency_loss_equals_a_hand_computation():
    """Swaps keep a bag of tokens, so with a bag-of-tokens embedding each prototype is its original:
    both sentences sit at squared distance 8 from the other's prototype, loss log(1 + e^-8)."""
    def bag(batch):  # (count of token 5, count of token 7) over the real tokens
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        return torch.stack([((ids == t) & mask).sum(1).float() for t in (5, 7)], dim=1)

    batch = {"input_ids": torch.tensor([[101, 5, 5, 7, 102], [101, 7, 7, 7, 102]]),
             "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    originals = bag(batch)  # (2, 1) and (0, 3)
    score = lambda q, p: -torch.cdist(q, p) ** 2  # noqa: E731  (ProtoNet's euclidean logits)
    loss = views_for_tests().loss([batch], originals, bag, score)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-8)), abs=1e-7)  # float32 cross-entropy


def test_protonet_adds_the_consistency_loss_with_its_weight():
    from conftest import attached, text_episode, tiny_encoder

    from metarun.learners.metric.protonet import ProtoNet

    enc = tiny_encoder()
    ep = text_episode(enc)
    plain, learner = ProtoNet(enc), attached(ProtoNet(enc), Consistency(0.5, views=3))
    assert not plain.trains_on_text and learner.trains_on_text  # the views are new text
    enc.eval()  # no dropout: the two learners' ProtoNet losses are equal
    torch.manual_seed(3)
    out = learner.training_step([ep])
    torch.manual_seed(3)
    support, query = learner.embed_episode(ep)
    alone = learner.objectives[0].views.loss([ep.support, ep.query], torch.cat([support, query]), learner.embed,
                                     learner.logits)
    assert out.metrics["consistency"] == pytest.approx(alone.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(plain.training_loss(ep).loss.item() + 0.5 * alone.item(), rel=1e-5)
    out.loss.backward()
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_consistency_options_are_refused_with_what_to_do():
    from conftest import FeatureEncoder, attached, tiny_encoder

    from metarun.errors import ConfigError
    from metarun.learners.metric.protonet import ProtoNet

    with pytest.raises(ConfigError, match="needs a BERT-style transformer encoder"):
        attached(ProtoNet(FeatureEncoder(4, 3)), Consistency(0.5))
    with pytest.raises(ConfigError, match=r"the encoder is frozen \(encoder.freeze=true\)"):
        attached(ProtoNet(tiny_encoder().requires_grad_(False)), Consistency(0.5))
    with pytest.raises(ConfigError, match=r"give a non-empty list of delete, swap, .* \('shuffle' is none of them\)"):
        attached(ProtoNet(tiny_encoder()), Consistency(0.5, augment=["swap", "shuffle"]))
    with pytest.raises(ConfigError, match="consistency.strength in \\(0, 1\\); got 2, 10, 1.5"):
        attached(ProtoNet(tiny_encoder()), Consistency(0.5, strength=1.5))
