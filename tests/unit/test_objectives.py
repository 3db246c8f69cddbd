"""Objectives on learners other than ProtoNet, two together, what a run derives from them, configs of
runs made before objectives and refiners, and protocols that refuse keys of another protocol."""

import pytest
import torch

from conftest import attached, compose_cfg, text_episode, tiny_encoder
from metarun.errors import ConfigError
from metarun.learners.functional import supervised_contrastive
from metarun.learners.objectives import MaskedLM, SupervisedContrastive


def test_supcon_on_matching_reads_the_features_of_its_own_forward():
    """Matching Networks hand their episode features to the objective: the term equals supervised
    contrastive over those features, and the step's loss is the plain loss + weight x term."""
    from metarun.learners.metric.matching import MatchingNet

    enc = tiny_encoder().eval()  # no dropout: the two learners' forwards are equal
    ep = text_episode(enc)
    plain, learner = MatchingNet(enc), attached(MatchingNet(enc), SupervisedContrastive(0.5, temperature=0.2))
    out = learner.training_step([ep])
    support, query = plain.embed_episode(ep)
    alone = supervised_contrastive(torch.cat([support, query]).float(),
                                   torch.cat([ep.support_labels, ep.query_labels]), 0.2)
    assert out.metrics["supcon"] == pytest.approx(alone.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(plain.training_loss(ep).loss.item() + 0.5 * alone.item(), rel=1e-5)


def test_mlm_joins_the_outer_loss_of_maml():
    """MAML (a learner that does not hand over features) takes the masked-LM term on its meta-parameters:
    the outer loss is MAML's + weight x term, and the term's gradient reaches the encoder and the head."""
    from metarun.learners.gradient.maml import MAML

    enc = tiny_encoder().eval()
    ep = text_episode(enc)
    torch.manual_seed(0)
    plain = MAML(enc, inner_steps=1)
    learner = attached(MAML(enc, inner_steps=1), MaskedLM(0.5))
    learner.load_state_dict(plain.state_dict(), strict=False)
    torch.manual_seed(3)
    base = plain.training_step([ep]).loss
    torch.manual_seed(3)
    out = learner.training_step([ep])
    head = learner.objectives[0].head
    assert out.loss.item() == pytest.approx(base.item() + 0.5 * out.metrics["mlm"], rel=1e-5)
    out.loss.backward()
    assert head.transform[0].weight.grad.abs().sum() > 0
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_two_objectives_on_fine_tuning_batches():
    """Fine-tuning's supervised batches have no queries: supcon reads the batch's features, MLM its
    tokens, and both add to the classification loss with their weights."""
    from metarun.data.collate import Episode
    from metarun.learners.transfer.finetune import FineTune

    enc = tiny_encoder().eval()
    ep = text_episode(enc)
    batch = Episode(ep.support, ep.support_labels, None, ep.support_labels, ep.n_way,
                    {"classes": ["a", "b", "c"]})
    torch.manual_seed(0)
    learner = attached(FineTune(enc, ["a", "b", "c"]), SupervisedContrastive(0.25), MaskedLM(0.5))
    torch.manual_seed(3)
    out = learner.training_step([batch])
    torch.manual_seed(3)
    plain = learner.training_loss(batch).loss
    mlm = learner.objectives[1].head.loss([batch.support], 0.15)
    supcon = supervised_contrastive(learner.embed(batch.support).float(), batch.support_labels, 0.1)
    assert out.metrics["mlm"] == pytest.approx(mlm.item(), rel=1e-5)
    assert out.metrics["supcon"] == pytest.approx(supcon.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(plain.item() + 0.25 * supcon.item() + 0.5 * mlm.item(), rel=1e-5)


def test_a_run_derives_its_inputs_and_regime_from_objectives_and_refiners():
    """Training on cached features needs a frozen encoder and nothing that reads the text; the names
    regime follows from a refiner or objective that reads class names."""
    from metarun.assembly import build_components
    from metarun.config import build, resolved

    def parts(*extra):
        cfg = compose_cfg(["debug=fast", "trainer.progress=false", *extra])
        trainer = build(cfg.trainer, "trainer")
        return build_components(cfg, resolved(cfg), trainer, trainer.dist)

    frozen = parts("encoder.freeze=true", "learner=relation")
    assert frozen.on_features and not frozen.learner.uses_class_names
    assert not parts("encoder.freeze=true", "learner=relation", "train_on_features=false").on_features
    names = parts("objective=[names,mlm]")
    assert names.learner.uses_class_names and names.learner.trains_on_text and not names.on_features
    assert parts("refiner=[name_prior]").learner.uses_class_names
    with pytest.raises(ConfigError, match="eval.test.shots contains 0"):
        parts("learner=matching", "eval.test.shots=[0,1]")


def test_configs_of_runs_before_the_redesign_are_respelled():
    """ProtoNet's old options become objectives and a refiner, the trainer's moved keys their new places;
    a config in today's spelling is left as it is."""
    from metarun.tracking.folder.run_dir import respelled

    old = {"learner": {"_target_": "metarun.learners.metric.protonet.ProtoNet", "name": "protonet", "scale": 10.0,
                       "label_prior": "learned", "label_weight": 1.0, "label_template": "{name}",
                       "contrastive_weight": 0.0, "instance_weight": 0.0, "temperature": 0.1, "mlm_weight": 0.1,
                       "mlm_probability": 0.15, "support_tuning_steps": 0, "support_tuning_lr": 1e-4,
                       "consistency_weight": 0.0, "name_contrastive_weight": 0.0},
           "trainer": {"max_steps": 150, "patience": 3, "train_on_features": False, "debug_kill_at_step": None}}
    new = respelled(old)
    assert new["learner"] == {"_target_": "metarun.learners.metric.protonet.ProtoNet", "name": "protonet",
                              "scale": 10.0}
    assert new["objective"] == {"mlm": {"_target_": "metarun.learners.objectives.MaskedLM", "weight": 0.1,
                                        "probability": 0.15}}
    assert new["refiner"]["name_prior"] | {} == {"_target_": "metarun.learners.refiners.NamePrior", "weight": 1.0,
                                                 "learned": True, "template": "{name}", "lr": 0.01}
    assert new["trainer"] == {"max_steps": 150} and new["train_on_features"] is False
    assert new["callbacks"]["early_stopping"]["patience"] == 3
    assert respelled(new) == new
    today = compose_cfg(["objective=[mlm]", "refiner=[name_prior]"])
    from omegaconf import OmegaConf

    assert respelled(OmegaConf.to_container(today)) == OmegaConf.to_container(today)


def test_support_tuning_in_an_old_config_is_refused_with_the_reason():
    from metarun.assembly import build_learner
    from metarun.tracking.folder.run_dir import respelled
    from omegaconf import OmegaConf

    old = {"learner": {"_target_": "metarun.learners.metric.protonet.ProtoNet", "name": "protonet",
                       "support_tuning_steps": 5, "support_tuning_lr": 1e-4}}
    with pytest.raises(ConfigError, match="support_tuning_steps .* was removed .* did not help"):
        build_learner(OmegaConf.create(respelled(old)["learner"]), tiny_encoder(), [])


@pytest.mark.parametrize("override,match", [
    ("+eval.test.transductive_steps=3", "eval.test.transductive_steps is a setting of eval=episodic"),
    ("+eval.val.draws=3", "eval.val.draws is a setting of .*PerClass"),
])
def test_a_key_of_another_protocol_is_refused(override, match):
    from metarun.config import build
    from metarun.evaluate import build_evaluator

    cfg = compose_cfg(["debug=fast", "eval=per_class", override])
    with pytest.raises(ConfigError, match=match):
        data = build(cfg.data, "data")
        build_evaluator(cfg.eval, override.split(".")[1], data, progress=False)


def test_objective_weights_and_targets_are_checked():
    with pytest.raises(ConfigError, match="objective.supcon.temperature=0 is not valid"):
        SupervisedContrastive(0.5, temperature=0)
    with pytest.raises(ConfigError, match="objective.mlm._target_=torch.nn.Linear is not a metarun Objective"):
        from metarun.learners.objectives import build_objectives

        build_objectives({"mlm": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}}, None)
