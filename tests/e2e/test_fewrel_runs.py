"""End-to-end runs for fewrel: the unit tests are in tests/unit/test_fewrel.py."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FAST, read_json, run_in_process
from metarun.errors import ConfigError


def fewrel_args(root) -> list[str]:
    """A fast run on the tiny FewRel file in `root`: three training and three test relations."""
    return [*FAST, "data=fewrel_val_split", f"data.root={root}", "data.train=[P100,P101,P102]",
            "data.test=[P103,P104,P105]", "data.val_per_class=4"]


def test_fewrel_runs_each_learner_on_the_official_protocol(fewrel_file, tmp_path):
    """Fewrel cli runs each new learner with the official protocol."""
    root = fewrel_file.parent
    args = [
        *fewrel_args(root),
        "eval=fewrel_official",
        "eval.test.n_way=[2,3]",
        "eval.test.episodes=12",
        "eval.val.n_way=3",
        "eval.val.n_query=2",
        "sampler.n_way=3",
        "sampler.n_query=2",
        "eval.val.shots=[1]",
    ]
    for learner, encoder in (("protonet", "cnn"), ("matching", "cnn"), ("relation", "tiny"), ("pair", "tiny")):
        run = tmp_path / learner
        run_in_process(
            [
                *args,
                f"learner={learner}",
                f"encoder={encoder}",
                "encoder.init=random" if encoder == "cnn" else "encoder.max_length=32",
            ],
            run,
        )
        out = read_json(run / "results.json")
        assert set(out["results"]) == {
            "val/3way_1shot",
            "test/2way_1shot",
            "test/2way_5shot",
            "test/3way_1shot",
            "test/3way_5shot",
        }
        assert all(v["episodes"] == 12 for k, v in out["results"].items() if k.startswith("test/"))


def test_nota_needs_a_learner_that_predicts_it(fewrel_file, tmp_path):
    args = [
        *fewrel_args(fewrel_file.parent),
        "encoder=cnn",
        "encoder.init=random",
        "sampler.n_way=2",
        "sampler.na_rate=1",
        "sampler.n_query=2",
        "eval.val.n_way=2",
        "eval.val.shots=[1]",
        "eval.val.n_query=2",
        "eval.test.n_way=2",
        "eval.test.na_rate=1",
        "eval.test.episodes=10",
    ]
    with pytest.raises(ConfigError, match=r"sampler.na_rate=1, eval.test.na_rate=1.*learner.nota=true"):
        run_in_process([*args, "learner=maml"], tmp_path / "maml")
    run_in_process([*args, "learner=protonet", "learner.nota=true"], tmp_path / "proto")
    assert {"test/2way_1shot_na1", "test/2way_5shot_na1"} <= set(
        read_json(tmp_path / "proto" / "results.json")["results"]
    )


def test_domain_adaptation_tests_on_another_file(fewrel_file, tmp_path, caplog):
    caplog.set_level("INFO", logger="metarun")
    other = tmp_path / "pubmed.json"  # a "different domain": other relation ids, same format
    raw = json.loads(fewrel_file.read_text())
    other.write_text(json.dumps({f"PM{i}": v for i, v in enumerate(raw.values())}))
    # both domains have relation names: the training file's must not label the target's relations
    (fewrel_file.parent / "pid2name.json").write_text(json.dumps({f"P{100 + i}": [f"wiki {i}", ""] for i in range(6)}))
    (tmp_path / "pm_names.json").write_text(json.dumps({f"PM{i}": [f"pubmed {i}", ""] for i in range(6)}))
    run = tmp_path / "da"
    run_in_process(
        [
            *fewrel_args(fewrel_file.parent),
            "encoder=cnn",
            "encoder.init=random",
            "sampler.n_way=3",
            "sampler.n_query=2",
            "eval.val.n_way=3",
            "eval.val.shots=[1]",
            "eval.val.n_query=2",
            "+data@eval.test.data=fewrel_file",
            f"eval.test.data.path={other}",
            "eval.test.data.names_file=pm_names.json",
        ],
        run,
    )
    out = read_json(run / "results.json")
    assert (out["data"], out["test_data"]) == ("fewrel_val_split", "pubmed")  # named after the file
    assert "test episodes from pubmed (6 test classes)" in caplog.text
    assert out["test_classes"] == {f"PM{i}": f"pubmed {i}" for i in range(6)}  # the relations tested on


def test_entity_markers_options_and_frozen_marker_warning(
    fewrel_file, tmp_path, caplog
):
    """Markers can start from punctuation and untrained frozen markers are warned about."""
    from metarun.models.encoders import TransformerEncoder

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    enc = TransformerEncoder(
        pretrained=False, config_overrides=tiny, entity_markers=True, pooling="entity_start", marker_init="punct"
    )
    table, ids = enc.model.get_input_embeddings().weight, enc.hf_tokenizer.convert_tokens_to_ids
    assert torch.equal(table[ids("[E1]")], table[ids("@")]) and torch.equal(table[ids("[/E2]")], table[ids("#")])
    assert not torch.equal(table[ids("[E1]")], table[ids("[E2]")])
    with pytest.raises(ConfigError, match="resize, punct"):
        TransformerEncoder(pretrained=False, config_overrides=tiny, entity_markers=True, marker_init="zero")
    caplog.set_level("WARNING", logger="metarun")
    args = [
        *fewrel_args(fewrel_file.parent),
        "encoder=minilm_markers",
        "encoder.max_length=32",
        "encoder.pretrained=true",
        "trainer.max_steps=0",
        "sampler.n_way=3",
        "sampler.n_query=2",
        "eval.val.n_way=3",
        "eval.test.n_way=3",
        "eval.val.shots=[1]",
        "eval.val.n_query=2",
        "eval.test.n_query=2",
        "eval.test.episodes=4",
    ]
    run_in_process(args, tmp_path / "resize")
    assert "entity-marker tokens whose embeddings are untrained" in caplog.text
    caplog.clear()
    run_in_process([*args, "encoder.marker_init=punct"], tmp_path / "punct")
    assert "untrained" not in caplog.text
