"""data.class_descriptions: readable class names read by learners that use names (ProtoNet's label prior)."""

import json

import pytest
import torch
from conftest import compose_cfg

from metarun.config import build
from metarun.data.class_descriptions import load_class_descriptions
from metarun.errors import ConfigError, DataError
from metarun.paths import config_dir


@pytest.mark.parametrize("data, n, example", [("hwu64", 64, ("iot_wemo_off", "turn off the smart plug socket")),
                                              ("clinc150", 150, ("pto_balance", "how many vacation days I have left"))])
def test_shipped_names_cover_every_intent(data, n, example):
    splits = json.loads((config_dir() / "class_splits" / f"{data}.json").read_text())["splits"]["1"]
    classes = [*splits["train"], *splits["val"], *splits["test"]]
    names = load_class_descriptions(data, classes, data)
    assert len(names) == n == len(classes) and names[example[0]] == example[1]


def test_descriptions_of_another_dataset_are_refused(tmp_path, caplog):
    with pytest.raises(DataError, match=r"describes none of data=banking77's classes \(card_arrival"):
        load_class_descriptions("hwu64", ["card_arrival", "card_linking"], "banking77")
    with pytest.raises(ConfigError, match=r"no such file; give a JSON path, auto, or one of clinc150, hwu64"):
        load_class_descriptions("nonesuch", ["a"], "x")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"names": {"a": ""}}))
    with pytest.raises(DataError, match="not a class-descriptions file .*non-empty texts"):
        load_class_descriptions(str(bad), ["a"], "x")
    part = tmp_path / "part.json"
    part.write_text(json.dumps({"names": {"a": "the letter a"}}))
    assert load_class_descriptions(str(part), ["a", "b"], "x") == {"a": "the letter a"}
    assert "leaves 1 of data=x's 2 classes undescribed (b...)" in caplog.text


def test_the_label_prior_embeds_the_description(tmp_path):
    """With descriptions, the name prototype of a class is the encoder's embedding of its description."""
    from metarun.data.dataset import Example
    from metarun.learners.metric.protonet import ProtoNet
    from metarun.learners.refiners import NamePrior

    csv = tmp_path / "d.csv"
    rows = [f"{t} {i},{c}" for c, t in [("a_x", "alpha"), ("b_y", "beta"), ("c_z", "gamma"), ("d_w", "delta")]
            for i in range(6)]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    desc = tmp_path / "names.json"
    desc.write_text(json.dumps({"names": {"c_z": "the third letter", "d_w": "the fourth"}}))
    cfg = compose_cfg(["data=table", f"data.path={csv}", "data.classes={train: [a_x], val: [b_y], test: [c_z, d_w]}",
                       f"data.class_descriptions={desc}", "encoder=tiny"])
    data = build(cfg.data, "data")
    assert data.class_names == {"c_z": "the third letter", "d_w": "the fourth"}
    encoder = build(cfg.encoder, "encoder")
    learner = ProtoNet(encoder).attach(refiners=[NamePrior()]).eval()
    learner.class_text = data.class_names
    batch = encoder.tokenize([Example(t, "") for t in ["the third letter", "the fourth", "a x"]])  # a_x: its id
    with torch.no_grad():
        expected = learner.embed(batch).float()
        torch.testing.assert_close(learner.name_prior.embeddings(learner, ["c_z", "d_w", "a_x"]), expected, rtol=1e-5,
                                   atol=1e-6)


def test_a_run_gives_its_learner_the_descriptions():
    """The assembled learner reads the data's descriptions; without them, the class ids."""
    from metarun.assembly import build_components
    from metarun.config import resolved
    from metarun.trainer import Trainer

    def learner(*extra):
        cfg = compose_cfg(["debug=fast", "trainer.progress=false", "data=hwu64", "refiner=[name_prior]", *extra])
        trainer: Trainer = build(cfg.trainer, "trainer")
        return build_components(cfg, resolved(cfg), trainer, trainer.dist).learner

    assert learner("data.class_descriptions=hwu64").class_text["iot_wemo_off"] == "turn off the smart plug socket"
    assert learner("data.class_descriptions=auto").class_text["iot_wemo_off"] == "turn off the smart plug socket"
    assert learner().class_text == {}
    assert learner("data=banking77", "data.class_descriptions=auto").class_text == {}  # no file shipped: the ids


def test_a_utf16_file_is_read_and_undecodable_bytes_are_named(tmp_path):
    utf16 = tmp_path / "names16.json"
    utf16.write_bytes(json.dumps({"names": {"a": "alpha"}}).encode("utf-16"))  # with its byte-order mark
    assert load_class_descriptions(str(utf16), ["a"], "x") == {"a": "alpha"}
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe\x00\xd8{")
    with pytest.raises(DataError, match=r"bad.json is not UTF-8 .*save it as UTF-8"):
        load_class_descriptions(str(bad), ["a"], "x")
