"""Every input file gets a message, never a traceback: the file, the line where it can be known, and
the option that fixes it (data/hf.py, data/text_table.py); and the warnings a researcher needs about
data that reads but may mislead (empty texts, repeated examples)."""

from __future__ import annotations

import logging

import pytest

from conftest import TABLE_ROWS, csv_file
from metarun.data.hf import load_hf
from metarun.data.text_table import load_table, read_rows
from metarun.errors import DataError

CLASSES = {"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]}


BAD = {  # name -> (file name, bytes, data=hf builder, what the message must say)
    "empty file": ("rows.csv", b"", "csv", r"rows.csv is empty \(0 bytes\)"),
    "header only": ("rows.csv", b"text,label\n", "csv", r"rows.csv holds no rows \(a header line only\?\)"),
    "not utf-8": (
        "rows.csv",
        b"text,label\nok,a\ncaf\xe9 au lait,a\n",
        "csv",
        r"rows.csv, line 3: bytes that are not utf-8 text .*data.encoding",
    ),
    "bad json line": (
        "rows.jsonl",
        b'{"text": "x", "label": "a"}\n{"text": "y", "label"\n',
        "json",
        r"rows.jsonl, line 2 is not valid JSON",
    ),
    "csv read as json": (
        "rows.csv",
        b"text,label\nhello,a\n",
        "json",
        r"rows.csv, line 1 is not valid JSON.*data.path=csv",
    ),
    "unbalanced quote": (
        "rows.tsv",
        b'text\tlabel\nfine\ta\n"never closed\ta\nmore\tb\n',
        "csv",
        r"rows.tsv, line 3: a quote .* never closes.*data.quoting=none",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_files_are_named_with_their_line(tmp_path, case):
    """Bad files are named with the line and what to do in both readers."""
    name, body, builder, message = BAD[case]
    path = csv_file(tmp_path, body, name)
    with pytest.raises(DataError, match=message):
        load_hf("x", builder, str(path), classes=CLASSES)
    if case != "csv read as json":  # data=table picks the format from the extension
        with pytest.raises(DataError, match=message):
            read_rows(path, "text", "label")


def test_the_options_named_in_the_messages_read_the_file(tmp_path):
    latin = csv_file(tmp_path, ("text,label\n" + TABLE_ROWS.replace("some", "caf\xe9")).encode("latin-1"))
    examples = read_rows(latin, "text", "label", encoding="latin-1")
    assert len(examples) == 20 and examples[0].text == "caf\xe9 text of a 0"
    quoted = csv_file(tmp_path, 'text\tlabel\n"quoted at the start\ta\nplain\tb\n', "q.tsv")
    assert [e.text for e in read_rows(quoted, "text", "label", quoting="none")] == ['"quoted at the start', "plain"]
    with pytest.raises(Exception, match=r"data.quoting='odd' is not valid; choose one of: minimal, none"):
        read_rows(quoted, "text", "label", quoting="odd")


def test_empty_texts_and_missing_labels_are_named(tmp_path, caplog):
    """Empty texts are skipped with their count and lines and a missing label names its line."""
    path = csv_file(tmp_path, "text,label\nhello,a\n,a\n   ,b\nworld,b\n")
    with caplog.at_level(logging.WARNING, "metarun"):
        examples = read_rows(path, "text", "label")
    assert [e.text for e in examples] == ["hello", "world"]
    assert "rows.csv: 2 of 4 rows have an empty text ('text') and were skipped (line 3, line 4)" in caplog.text
    path = csv_file(tmp_path, "text,label\nhello,a\nbye,\n")
    for read in (lambda: read_rows(path, "text", "label"), lambda: load_hf("x", "csv", str(path), classes=CLASSES)):
        with pytest.raises(DataError, match=r"rows.csv, line 3: the label \('label'\) is empty or missing"):
            read()


def test_repeats_are_counted_and_dedupe_drops_them(tmp_path, caplog):
    """Repeated examples are counted and data dedupe drops them."""
    repeats = "some text of a 0,a\nsome text of a 0,a\nsome text of a 0,b\n"
    path = csv_file(tmp_path, "text,label\n" + TABLE_ROWS + repeats)
    with caplog.at_level(logging.WARNING, "metarun"):
        kept = load_table("x", str(path), classes=CLASSES)
    assert "2 examples repeat an earlier example of their class word for word" in caplog.text
    assert "data.dedupe=true" in caplog.text and len(kept.train) == 8 + 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, "metarun"):
        deduped = load_table("x", str(path), classes=CLASSES, dedupe=True)
        hf = load_hf("x", "csv", str(path), classes=CLASSES, dedupe=True)
    assert len(deduped.train) == len(hf.train) == 8 + 1  # the copy in class b is another class's example
    assert caplog.text == ""


def test_a_datasets_cache_that_is_a_file_is_named(tmp_path, monkeypatch):
    import datasets

    blocker = tmp_path / "cache_file"
    blocker.write_text("x")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(blocker))
    with pytest.raises(DataError, match=r"datasets cache .*cache_file \(HF_DATASETS_CACHE\) is a file"):
        read_rows(csv_file(tmp_path, "text,label\n" + TABLE_ROWS), "text", "label")
