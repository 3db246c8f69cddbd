"""End-to-end runs of ProtoNet with refiners and objectives: the unit tests are in tests/unit/test_protonet.py
and tests/unit/test_objectives.py."""

import pytest
from conftest import FAST, run_in_process

from metarun.errors import ConfigError


def test_transductive_eval_runs_and_needs_its_learner(tmp_path):
    results = run_in_process([*FAST, "trainer.max_steps=0", "eval.test.transductive_steps=2"], tmp_path / "run")
    assert set(results["results"]) == {"test/5way_1shot", "test/5way_5shot"}
    assert (results["uses_class_names"], results["reads_test_unlabelled"]) == (False, True)
    assert results["regime"] == "no names, transductive"
    with pytest.raises(ConfigError, match=r"eval.test.transductive_steps=2 .* learner=matching does not build"):
        run_in_process([*FAST, "learner=matching", "eval.test.transductive_steps=2"], tmp_path / "bad")
    rectified = run_in_process([*FAST, "trainer.max_steps=0", "eval.test.rectify=true"], tmp_path / "rectified")
    assert rectified["results"]["test/5way_1shot"]["episodes"] == 20 and rectified["reads_test_unlabelled"]
    with pytest.raises(ConfigError, match=r"eval.test.rectify=true .* learner=matching does not build"):
        run_in_process([*FAST, "learner=matching", "eval.test.rectify=true"], tmp_path / "bad2")
    with pytest.raises(ConfigError, match="both refine prototypes with the queries; use one of them"):
        run_in_process([*FAST, "eval.test.rectify=true", "eval.test.transductive_steps=2"], tmp_path / "bad3")


def test_a_learned_label_prior_trains_and_tests(tmp_path):
    results = run_in_process([*FAST, "refiner=[name_prior]", "refiner.name_prior.learned=true"], tmp_path / "run")
    assert results["results"]["test/5way_1shot"]["episodes"] == 20
    assert results["regime"] == "names, inductive" and results["uses_class_names"]
    assert not results["reads_test_unlabelled"]


def test_k0_episodes_test_the_names_alone_and_other_learners_refuse_them(tmp_path):
    """eval.test.shots=[0,1]: K = 0 episodes (names only) beside K = 1, for a name-reading ProtoNet; a
    learner without names refuses before training, naming the option and what to do."""
    prior = ["refiner=[name_prior]", "refiner.name_prior.learned=true"]
    results = run_in_process([*FAST, *prior, "trainer.max_steps=2", "eval.test.shots=[0,1]"], tmp_path / "run")
    assert {"test/5way_0shot", "test/5way_1shot"} <= set(results["results"])
    assert results["results"]["test/5way_0shot"]["episodes"] == 20 and results["regime"] == "names, inductive"
    with pytest.raises(ConfigError, match=r"eval.test.shots contains 0: .* learner=protonet does not do; use "
                                          r"learner=protonet with refiner=\[name_prior\]"):
        run_in_process([*FAST, "eval.test.shots=[0,1]"], tmp_path / "bad")
    with pytest.raises(ConfigError, match=r"sampler.k_shot=0 is not valid; it must be a whole number of at least 1"):
        run_in_process([*FAST, *prior, "sampler.k_shot=0"], tmp_path / "bad2")


def test_a_name_contrastive_run_is_of_the_names_regime(tmp_path):
    results = run_in_process([*FAST, "objective=[names]", "trainer.max_steps=3"], tmp_path / "run")
    assert results["steps"] == 3 and results["regime"] == "names, inductive"


def test_support_tuning_of_an_old_config_is_refused(tmp_path):
    """Support-set tuning was removed (it did not help): the old option names why."""
    with pytest.raises(Exception, match="support_tuning_steps"):
        run_in_process([*FAST, "trainer.max_steps=0", "+learner.support_tuning_steps=2"], tmp_path / "run")


def test_mlm_steps_read_only_training_utterances(tmp_path, monkeypatch):
    """Every sentence the masked-LM loss sees is a training-class utterance, never a held-out one."""
    from conftest import compose_cfg

    from metarun.config import build
    from metarun.models.masked_lm import MaskedLMHead

    def rows(batch) -> list[tuple]:  # each sentence's token ids, without padding
        return [tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])]

    seen, loss = [], MaskedLMHead.loss

    def recording(self, batches, probability):
        seen.extend(r for b in batches for r in rows(b))
        return loss(self, batches, probability)

    monkeypatch.setattr(MaskedLMHead, "loss", recording)
    run_in_process([*FAST, "objective=[mlm]", "trainer.max_steps=4"], tmp_path / "run")
    cfg = compose_cfg(FAST)
    data, tokenize = build(cfg.data, "data"), build(cfg.encoder, "encoder").tokenize
    train, val, test = (set(rows(tokenize(list(split.examples)))) for split in (data.train, data.val, data.test))
    assert len(seen) == 4 * 50 and set(seen) <= train  # 4 steps of 5-way 5-shot 5-query
    assert not set(seen) & ((val | test) - train)


def test_consistency_reads_only_training_utterances(tmp_path, monkeypatch):
    """Every utterance the consistency loss augments is a training-class utterance."""
    from conftest import compose_cfg

    from metarun.config import build
    from metarun.learners.objectives.consistency import AugmentedViews

    seen, content = [], AugmentedViews.content

    def recording(batches):
        rows = content(batches)
        seen.extend(map(tuple, rows))
        return rows

    monkeypatch.setattr(AugmentedViews, "content", staticmethod(recording))
    results = run_in_process([*FAST, "objective=[consistency]", "trainer.max_steps=4"], tmp_path / "run")
    assert results["steps"] == 4
    cfg = compose_cfg(FAST)
    data, tokenize = build(cfg.data, "data"), build(cfg.encoder, "encoder").tokenize
    train, val, test = (set(map(tuple, content([tokenize(list(split.examples))]))) for split in
                        (data.train, data.val, data.test))
    assert len(seen) == 4 * 50 and set(seen) <= train  # 4 steps of 5-way 5-shot 5-query
    assert not set(seen) & ((val | test) - train)
