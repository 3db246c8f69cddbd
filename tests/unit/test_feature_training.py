"""Training on cached features: a frozen encoder under a learner that reads text only through its
features gets episodes of features encoded once, and they are the features it would have computed."""

import pytest
import torch

from conftest import FAST, compose_cfg
from metarun.data.collate import FeatureEpisodeDataset
from metarun.config import build
from metarun.assembly import build_components, training_episodes
from metarun.config import resolved
from metarun.trainer import Trainer

FROZEN = [*FAST, "encoder.freeze=true"]


def components(args):
    cfg = compose_cfg(args)
    trainer: Trainer = build(cfg.trainer, "trainer")
    return build_components(cfg, resolved(cfg), trainer, trainer.dist)


@pytest.mark.parametrize("learner", ["relation", "snail", "mann", "siamese", "induction"])
def test_cached_episodes_match_encoded_text(learner):
    """Cached episodes give the loss and gradients of encoded text."""
    c = components([*FROZEN, f"learner={learner}"])
    cached = training_episodes(c)
    assert isinstance(cached, FeatureEpisodeDataset) and len(cached) == len(c.episodes)
    c.learner.eval()  # the cache is encoded without dropout: compare with the encoder in eval mode
    for i in (0, 5):
        text, feats = c.episodes[i], cached[i]
        assert feats.encoded and not text.encoded and feats.meta == text.meta
        assert torch.equal(feats.support_labels, text.support_labels)
        losses, grads = [], []
        for episode in (text, feats):
            c.learner.zero_grad()
            torch.manual_seed(i)  # SNAIL and MANN draw the presentation order and label slots
            loss = c.learner.training_loss(episode).loss
            loss.backward()
            losses.append(loss.item())
            grads.append([p.grad.clone() for p in c.learner.parameters() if p.requires_grad])
        assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_length_ordered_encoding_is_order_free():
    """Evaluation and the training cache batch sentences of similar token counts (less padding);
    the features must not depend on which sentences share a batch."""
    from metarun.evaluate.common import encode_examples, token_lengths

    from metarun.data.dataset import FewShotDataset

    c = components([*FROZEN, "trainer.max_steps=0"])
    data = FewShotDataset(c.data.val.examples[::60], "every 60th validation example")
    c.learner.eval()
    with torch.no_grad():
        by_tokens = encode_examples(c.learner, data, torch.device("cpu"), 8, "tokens", False)
        by_chars = encode_examples(c.learner, data, torch.device("cpu"), 8, "chars", False, sort_by="chars")
        one_by_one = encode_examples(c.learner, data, torch.device("cpu"), 1, "single", False)
    torch.testing.assert_close(by_tokens, one_by_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_chars, one_by_one, rtol=1e-4, atol=1e-5)
    lengths = token_lengths(c.encoder.tokenize, data.examples, chunk=7)
    assert lengths == [int(c.encoder.tokenize([e])["attention_mask"].sum()) for e in data.examples]
