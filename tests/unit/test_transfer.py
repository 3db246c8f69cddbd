"""Transfer-learning family: test-time heads, supervised batches, the finetune learner and the
"K examples for every class" protocol."""

from __future__ import annotations

import pytest
import torch

from metarun.data.dataset import Example, FewShotDataset, LabelledSplits
from metarun.data.collate import Episode
from metarun.data.sampler import BatchSampler
from metarun.errors import ConfigError, DataError
from metarun.evaluate import PerClassEvaluator
from metarun.learners.transfer.finetune import FineTune
from metarun.learners.heads import fit_head, fit_logistic_regression
from conftest import FeatureEncoder


def blobs(n_classes=4, per_class=30, dim=8, seed=0, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g) * spread
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def test_logistic_regression_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs()
    for C in (0.1, 1.0):
        w, b = fit_logistic_regression(x, y, 4, C=C, max_iter=500, tol=1e-7)

        def gap(ref_c):  # largest difference in class-centred logits (the optimum is unique up to a shift)
            ref = sklearn.LogisticRegression(C=ref_c, max_iter=5000, tol=1e-10).fit(x.double().numpy(), y.numpy())
            theirs = torch.from_numpy(ref.decision_function(x.double().numpy()))
            ours = (x @ w.T + b).double()
            return ((ours - ours.mean(1, keepdim=True)) - (theirs - theirs.mean(1, keepdim=True))).abs().max().item()

        # equal up to float32 optimisation precision; a twice weaker penalty is far off
        assert gap(C) < 1e-2 and gap(2 * C) > 10 * gap(C), C


def test_logistic_regression_runs_under_inference_mode():
    x, y = blobs()
    with torch.inference_mode():
        w, b = fit_logistic_regression(x, y, 4)
    assert w.shape == (4, 8) and b.shape == (4,)
    assert ((x @ w.T + b).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_trained_heads_fit_the_support_set_deterministically(kind):
    x, y = blobs(per_class=5)
    logits = fit_head(x, y, 4, kind, steps=200, lr=0.1)
    assert logits(x).shape == (20, 4)
    assert (logits(x).argmax(1) == y).float().mean() >= 0.95
    assert torch.equal(logits(x), fit_head(x, y, 4, kind, steps=200, lr=0.1)(x))


def labelled(n_classes=3, per_class=7, prefix="c"):
    return FewShotDataset(tuple(Example(f"{prefix}{c} sentence {i}", f"{prefix}{c}") for c in range(n_classes)
                                for i in range(per_class)), source="test data")


def test_batch_sampler_visits_every_example_once_per_epoch():
    data = labelled(3, 7)  # 21 examples, batches of 4
    sampler = BatchSampler(data, batch_size=4, seed=3)
    stream = [i for b in range(21) for i in sampler[b].support_idx]  # 84 positions = 4 epochs
    for epoch in range(4):
        assert sorted(stream[21 * epoch : 21 * (epoch + 1)]) == list(range(21))
    spec = sampler[5]
    assert spec.n_way == 3 and len(spec.support_idx) == 4 and spec.query_idx == ()
    assert [data.classes[label] for label in spec.labels] == [data[i].label for i in spec.support_idx]
    assert sampler[5] == BatchSampler(data, batch_size=4, seed=3)[5]
    assert sampler[5] != BatchSampler(data, batch_size=4, seed=4)[5]
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSampler(data, batch_size=0, seed=0)


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_finetune_pretraining_reaches_every_parameter(classifier):
    learner = FineTune(FeatureEncoder(8, 6), train_classes=["a", "b", "c", "d"], classifier=classifier)
    x, y = blobs(per_class=3)
    out = learner.training_loss(Episode(x, y, None, torch.zeros(0, dtype=torch.long), n_way=4))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_finetune_refuses_episodes_and_bad_options():
    learner = FineTune(FeatureEncoder(8, 6), train_classes=["a", "b", "c", "d"])
    x, y = blobs(n_classes=2, per_class=2)
    with pytest.raises(ConfigError, match="sampler=batches"):
        learner.training_loss(Episode(x, y, x, y, n_way=2))
    for kwargs, words in ((dict(test_head="svm"), "logreg, linear, cosine"), (dict(classifier="mlp"), "linear, cosine"),
                          (dict(C=0), "learner.C"), (dict(test_steps=0), "test_steps")):
        with pytest.raises(ConfigError, match=words):
            FineTune(FeatureEncoder(8, 6), train_classes=["a"], **kwargs)


@pytest.mark.parametrize("head", ["logreg", "linear", "cosine"])
def test_finetune_test_heads_give_episode_logits(head):
    learner = FineTune(FeatureEncoder(8, 6), train_classes=["a", "b"], test_head=head)
    x, y = blobs(n_classes=5, per_class=4, dim=6, spread=4.0)
    with torch.inference_mode():
        logits = learner.predict_from_features(x, y, x, 5)
    assert logits.shape == (20, 5)
    assert (logits.argmax(1) == y).float().mean() >= 0.9


def per_class_evaluator(shots=(2,), draws=3, seed=0):
    data = LabelledSplits("toy", labelled(3, 7), labelled(3, 4))
    return PerClassEvaluator(data, list(shots), draws, seed, progress=False)


def test_per_class_draws_are_k_per_class_and_seeded():
    ev = per_class_evaluator(shots=(2, 5))
    for k in (2, 5):
        draw = ev.draw(k, 0)
        labels = [ev.data.pool[i].label for i in draw]
        assert {c: labels.count(c) for c in set(labels)} == {c: k for c in ev.classes}
        assert len(set(draw)) == len(draw)
    assert ev.draw(2, 1) == per_class_evaluator(shots=(2, 5)).draw(2, 1)
    assert ev.draw(2, 0) != ev.draw(2, 1)
    assert ev.draw(2, 0) != per_class_evaluator(seed=1).draw(2, 0)


def test_per_class_names_a_class_with_too_few_examples():
    with pytest.raises(DataError, match=r"'c0' has 7.*lower eval.test.shots"):
        per_class_evaluator(shots=(8,))
    with pytest.raises(ConfigError, match="draws"):
        per_class_evaluator(draws=0)


def test_per_class_without_a_target_says_what_to_do():
    """Per class without a bolt lab target says how to name one."""
    from metarun.evaluate import build_evaluator
    from conftest import compose_cfg

    cfg = compose_cfg(["data=fewrel", "eval=per_class"])
    with pytest.raises(ConfigError, match="eval.test.data.bolt_name=banking"):
        build_evaluator(cfg.eval, "test", None, progress=False)


def test_fresh_heads_train_at_their_own_rate():
    learner = FineTune(FeatureEncoder(8, 6), train_classes=["a", "b"], head_lr=0.5)
    enc_group, head_group = learner.param_groups(0.01)
    assert (enc_group["lr"], head_group["lr"]) == (0.01, 0.5)
    assert {id(p) for p in enc_group["params"]} == {id(p) for p in learner.encoder.parameters()}
    assert {id(p) for p in head_group["params"]} == {id(p) for p in learner.head.parameters()}
    assert FineTune(FeatureEncoder(8, 6), train_classes=["a"], head_lr=None).param_groups(0.01)[1]["lr"] == 0.01
    with pytest.raises(ConfigError, match="head_lr"):
        FineTune(FeatureEncoder(8, 6), train_classes=["a"], head_lr=0.0)


def test_distillation_loss_matches_a_direct_computation():
    from metarun.learners.transfer.distill import distillation_loss

    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    T, alpha = 3.0, 0.7
    p_t, log_p_s = torch.softmax(t / T, -1), torch.log_softmax(s / T, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    ce = -torch.log_softmax(s, -1)[torch.arange(6), y].mean()
    expected = alpha * T**2 * kl + (1 - alpha) * ce
    assert distillation_loss(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(t, t, y, T, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_from_a_hub_classifier_maps_labels(tmp_path):
    """Distill from a hugging face classifier maps its labels to the training classes."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from metarun.learners.transfer.distill import Distill
    from metarun.models.encoders import TransformerEncoder

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    encoder = TransformerEncoder(pretrained=False, config_overrides=tiny)
    labels = ["card lost", "other", "refund", "top up"]  # the teacher's order; index 1 is not a training class
    config = AutoConfig.for_model("bert", **tiny, vocab_size=encoder.model.config.vocab_size,
                                  id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    teacher_dir = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(teacher_dir)
    encoder.hf_tokenizer.save_pretrained(teacher_dir)

    classes = ["refund", "card lost", "top up"]
    learner = Distill(encoder, classes, teacher=str(teacher_dir), student_layers=[1])
    assert len(learner.encoder.model.encoder.layer) == 1 and learner.head.out_features == 3
    words = (("card", "refund"), ("money", "top up"), ("pin", "card lost"))
    examples = [Example(f"my {w} please", c) for w, c in words]
    batch = encoder.tokenize(examples)
    full = learner.teacher.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    assert torch.equal(learner.teacher(batch), full[:, [2, 0, 3]])
    episode = Episode(batch, torch.tensor([0, 2, 1]), None, torch.tensor([]), n_way=3)
    out = learner.training_loss(episode)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in learner.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in learner.teacher.parameters())

    with pytest.raises(ConfigError, match="lacks 1 training classes.*'balance'"):
        Distill(encoder, [*classes, "balance"], teacher=str(teacher_dir))
    with pytest.raises(ConfigError, match=r"learner.teacher='.*nowhere' does not load"):
        Distill(encoder, classes, teacher=str(tmp_path / "nowhere"))
    encoder.hf_tokenizer.add_tokens(["zzzword"])  # the teacher's tokenizer now has a token the student lacks
    encoder.hf_tokenizer.save_pretrained(teacher_dir)
    encoder.hf_tokenizer = TransformerEncoder(pretrained=False, config_overrides=tiny).hf_tokenizer
    with pytest.raises(ConfigError, match="different tokenizer"):
        Distill(encoder, classes, teacher=str(teacher_dir))


def test_per_class_finetune_trains_a_copy_per_draw():
    """Per class finetune head trains a copy per draw and is seeded."""
    from metarun.evaluate import DrawFineTuning
    from metarun.models.encoders import TransformerEncoder

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    torch.manual_seed(0)
    learner = FineTune(TransformerEncoder(pretrained=False, config_overrides=tiny, max_length=16), ["x"])
    before = {k: v.clone() for k, v in learner.encoder.state_dict().items()}
    data = LabelledSplits("toy", labelled(3, 7), labelled(3, 4))
    spec = DrawFineTuning(epochs=15, batch_size=4, lr=1e-3, head_lr=1e-2)
    ev = PerClassEvaluator(data, [3], draws=2, seed=0, progress=False, head="finetune", finetune=spec)
    torch.manual_seed(1)  # dropout draws from the global generator, as in training
    first = ev(learner, torch.device("cpu"))["test/toy_3per_class"]
    torch.manual_seed(1)
    assert ev(learner, torch.device("cpu"))["test/toy_3per_class"] == first
    assert first["draws"] == 2 and min(first["per_draw"]) > 90  # the class token decides; chance is 33%
    assert all(torch.equal(v, before[k]) for k, v in learner.encoder.state_dict().items())
    with pytest.raises(ConfigError, match="eval.test.head.*logreg, finetune"):
        PerClassEvaluator(data, [3], draws=2, seed=0, head="svm")


def test_validation_can_use_another_dataset_than_training():
    """Domain adaptation: choose checkpoints on the target domain's validation classes."""
    from metarun.config import build
    from metarun.evaluate import build_evaluator
    from conftest import compose_cfg

    cfg = compose_cfg(["data=banking77", "+data@eval.val.data=hwu64"])
    val = build_evaluator(cfg.eval, "val", build(cfg.data, "data"), progress=False)
    hwu = build(compose_cfg(["data=hwu64"]).data, "data")
    assert val.classes == hwu.val.classes and val.prefix == "val"
