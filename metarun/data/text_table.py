"""Reader for labelled text tables: CSV, TSV and JSONL files with a text and a label column."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from metarun.data.class_splits import ClassSplit, resolve_class_split
from metarun.data.dataset import DataSplits, Example, FewShotDataset, split_by_classes
from metarun.errors import DataError

FORMATS = ("csv", "tsv", "jsonl")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not valid; choose one of: auto, {', '.join(FORMATS)}.")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("json", "jsonl", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise DataError(f"cannot tell the format of {path} from its extension; set data.format to one of {FORMATS}.")


def read_rows(path: str | Path, text_column: str, label_column: str, fmt: str = "auto") -> list[Example]:
    """Read one file into examples. Empty texts are skipped; a missing column is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist. Point the data config at it, e.g. data.path=/path/to/file.tsv."
        )
    fmt = detect_format(path, fmt)
    examples = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if fmt == "jsonl":  # (line number, row)
                rows = ((n, _json_line(path, n, line)) for n, line in enumerate(f, 1) if line.strip())
                where = "line"
            else:
                csv.field_size_limit(sys.maxsize)  # 20 Newsgroups posts exceed the 128 KiB default
                rows = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
                fields = rows.fieldnames or []
                for col in (text_column, label_column):
                    if col not in fields:
                        raise DataError(
                            f"{path} has no column {col!r}; its columns are {fields}. "
                            f"Set data.text_column / data.label_column."
                        )
                rows = enumerate(rows, 2)  # line 1 is the header
                where = "line"
            for n, row in rows:
                if text_column not in row or label_column not in row:
                    raise DataError(f"{path}, {where} {n}: needs keys {text_column!r} and {label_column!r} (data.text_column "
                                    f"and data.label_column), got {list(row)}. Set data.text_column / data.label_column "
                                    f"to the file's names.")
                text, label = row[text_column], row[label_column]
                if text is None or label is None or not str(label).strip():
                    raise DataError(f"{path}, {where} {n}: missing text or label; is the file cut short?")
                text = normalise(str(text))
                if text:
                    examples.append(Example(text=text, label=str(label).strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}. Check the file is a readable UTF-8 {fmt} file.") from None
    if not examples:
        raise DataError(f"{path} holds no labelled examples.")
    return examples


def _json_line(path: Path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {n} is not valid JSON ({e.msg}).") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}, line {n}: expected a JSON object with text and label keys.")
    return row


def load_table(
    name: str,
    path: str | Sequence[str],
    text_column: str = "text",
    label_column: str = "label",
    format: str = "auto",
    classes: dict | None = None,
    split_file: str | None = None,
    split: int | str = 1,
    train_per_class: int | None = None,
    subsample_seed: int = 0,
) -> DataSplits:
    """Any CSV/TSV/JSONL file(s) with a class split given inline (`classes`) or as a JSON file."""
    paths = [path] if isinstance(path, str) else list(path)
    examples = [e for p in paths for e in read_rows(p, text_column, label_column, format)]
    data = FewShotDataset(tuple(examples), source=", ".join(str(p) for p in paths))
    cs = resolve_class_split(name, classes, split_file, split)
    return make_splits(name, data, cs, train_per_class, subsample_seed)


def make_splits(
    name: str, data: FewShotDataset, cs: ClassSplit, train_per_class: int | None, subsample_seed: int
) -> DataSplits:
    splits = split_by_classes(name, data, cs.train, cs.val, cs.test, cs.where)
    if train_per_class is not None:
        splits = DataSplits(name, subsample_per_class(splits.train, train_per_class, subsample_seed), splits.val, splits.test)
    return splits


def subsample_per_class(data: FewShotDataset, per_class: int, seed: int) -> FewShotDataset:
    """Keep at most `per_class` examples of each class, chosen by a fixed seed (low-data profiles)."""
    import numpy as np

    if per_class < 1:
        raise DataError(f"data.train_per_class must be a positive number of examples, got {per_class}.")
    rng = np.random.default_rng(seed)
    keep = sorted(i for c in data.classes for i in _choose(rng, data.indices_of(c), per_class))
    return FewShotDataset(tuple(data[i] for i in keep), f"{data.source}, {per_class} per class")


def _choose(rng, indices: tuple[int, ...], k: int) -> list[int]:
    if len(indices) <= k:
        return list(indices)
    return [indices[j] for j in rng.choice(len(indices), size=k, replace=False)]
