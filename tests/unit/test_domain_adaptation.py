"""Domain adaptation on unlabelled target text: the gradient-reversal layer, the discriminator's loss,
the unlabelled stream (formats, never a validation or test sentence), and the objectives reading it."""

import json
import math

import pytest
import torch

from conftest import attached, text_episode, tiny_encoder
from metarun.data.dataset import Example
from metarun.data.unlabelled import UnlabelledText, read_unlabelled
from metarun.errors import ConfigError, DataError
from metarun.learners.functional import dann_lambda, reverse_gradient
from metarun.learners.objectives import Adversarial, MaskedLM
from metarun.learners.objectives.adversarial import discriminator_loss


def test_the_reversal_layer_is_the_identity_forward_and_minus_lambda_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    w = torch.randn(4, 3)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w)  # the identity's gradient is w
    assert dann_lambda(0.0) == 0.0 and dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5) == pytest.approx(0.986614, abs=1e-6)


def test_the_discriminator_loss_equals_a_hand_computation():
    logits = torch.tensor([2.0, -1.0, 0.5, -0.5])  # two source (label 0), two target (label 1)
    loss, acc = discriminator_loss(logits, 2)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = -(math.log(1 - sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(sig(0.5)) + math.log(sig(-0.5))) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc == 0.5  # source 2.0 and target -0.5 are wrong


def test_the_adversarial_term_trains_the_discriminator_and_reverses_into_the_encoder():
    """One backward: the discriminator descends its loss, the encoder gets the reversed gradient (its
    gradient from the term alone is -lambda times the gradient without the reversal)."""
    enc = tiny_encoder().eval()
    ep = text_episode(enc)
    ep.meta["index"] = 3
    stream = UnlabelledText(tuple(Example(f"target sentence number {i} about genes", "<unlabelled>")
                                  for i in range(8)), "test")
    from metarun.learners.metric.protonet import ProtoNet

    learner = attached(ProtoNet(enc), Adversarial(1.0, hidden=8, schedule="constant"))
    objective = learner.objectives[0]
    objective.use_run(stream, total_episodes=10)
    torch.manual_seed(0)
    value, metrics = objective.loss(ep, None, learner)
    assert set(metrics) == {"adversarial", "adversarial_acc", "adversarial_lambda"}
    assert metrics["adversarial_lambda"] == 1
    value.backward()
    reversed_grad = enc.model.embeddings.word_embeddings.weight.grad.clone()
    disc_grad = objective.discriminator[0].weight.grad.clone()
    learner.zero_grad()
    torch.manual_seed(0)  # the same draw, through the discriminator without the reversal layer
    support, query = learner.embed_episode(ep)
    target = learner.embed(objective.target_batch(learner, 12))
    logits = objective.discriminator(torch.cat([support, query, target]).float()).squeeze(-1)
    discriminator_loss(logits, 12)[0].backward()
    assert torch.allclose(objective.discriminator[0].weight.grad, disc_grad, atol=1e-6)
    assert torch.allclose(enc.model.embeddings.word_embeddings.weight.grad, -reversed_grad, atol=1e-6)


def test_an_objective_that_reads_unlabelled_text_needs_a_stream():
    enc = tiny_encoder()
    from metarun.learners.metric.protonet import ProtoNet

    learner = attached(ProtoNet(enc), MaskedLM(0.5, source="unlabelled"))
    assert "unlabelled" in learner.objectives[0].reads
    with pytest.raises(ConfigError, match="objective=mlm reads unlabelled target-domain text, and this run has none"):
        learner.objectives[0].use_run(None, 10)
    with pytest.raises(ConfigError, match="objective.mlm.source='target' is not valid"):
        MaskedLM(0.5, source="target")


def test_target_mlm_reads_the_stream_not_the_episode():
    """source=unlabelled: the masked-LM batch is drawn from the stream, as many sentences as the episode."""
    enc = tiny_encoder().eval()
    ep = text_episode(enc)
    stream = UnlabelledText(tuple(Example(f"pubmed words {i}", "<unlabelled>") for i in range(5)), "test")
    from metarun.learners.metric.protonet import ProtoNet

    learner = attached(ProtoNet(enc), MaskedLM(0.5, source="unlabelled"))
    seen = []
    head = learner.objectives[0].head
    original = head.loss
    head.loss = lambda batches, p: seen.extend(batches) or original(batches, p)
    learner.objectives[0].use_run(stream, 10)
    learner.training_step([ep])
    assert len(seen) == 1 and len(seen[0]["input_ids"]) == 12  # 3-way 2-shot 2-query: 12 sentences


def test_every_format_reads_and_eval_sentences_are_left_out(tmp_path):
    fewrel = [{"tokens": ["BRCA1", "binds", "p53"], "h": ["brca1", "x", [[0]]], "t": ["p53", "y", [[2]]]}]
    files = {"a.json": json.dumps(fewrel), "b.jsonl": '{"text": "one"}\n{"text": "two"}\n',
             "c.csv": "text,x\nthree,1\nfour,2\n", "d.tsv": "text\tx\nfive\t1\n", "e.txt": "six\n\nseven\n"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    first = read_unlabelled(str(tmp_path / "a.json"))
    assert first.examples[0].tokens == ("BRCA1", "binds", "p53") and first.examples[0].head == (0, 0)
    assert [e.text for e in read_unlabelled(str(tmp_path / "b.jsonl")).examples] == ["one", "two"]
    assert [e.text for e in read_unlabelled(str(tmp_path / "c.csv")).examples] == ["three", "four"]
    assert [e.text for e in read_unlabelled(str(tmp_path / "d.tsv")).examples] == ["five"]
    stream = read_unlabelled(str(tmp_path / "e.txt"))
    assert [e.text for e in stream.examples] == ["six", "seven"]
    kept = stream.without(["seven", "eight"])
    assert [e.text for e in kept.examples] == ["six"] and kept.record()["eval_text_dropped"] == 1
    allowed = read_unlabelled(str(tmp_path / "e.txt"), allow_eval_text=True).without(["seven"])
    assert len(allowed) == 2 and allowed.record()["allow_eval_text"]
    with pytest.raises(DataError, match="every sentence of the unlabelled text"):
        stream.without(["six", "seven"])
    with pytest.raises(DataError, match="no column 'sentence'"):
        read_unlabelled(str(tmp_path / "c.csv"), column="sentence")
    with pytest.raises(ConfigError, match="the format is told by the suffix"):
        read_unlabelled(str(tmp_path / "f.parquet"))
    with pytest.raises(DataError, match="does not exist"):
        read_unlabelled(str(tmp_path / "missing.txt"))
