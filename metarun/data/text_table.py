"""Reader for labelled text tables: CSV, TSV, JSONL and parquet files with a text and a label column,
read through Hugging Face `datasets` (data/hf.py), split by class lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metarun.data.class_splits import ClassSplit, resolve_class_split
from metarun.data.dataset import DataSplits, Example, FewShotDataset, drop_duplicates, split_by_classes
from metarun.data.hf import read_file
from metarun.errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not valid; choose one of: auto, {', '.join(FORMATS)}.")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("json", "jsonl", "ndjson"):
        return "jsonl"
    if suffix == "pq":
        return "parquet"
    if suffix in FORMATS:
        return suffix
    raise DataError(f"cannot tell the format of {path} from its extension; set data.format to one of {FORMATS}.")


def read_rows(path: str | Path, text_column: str, label_column: str, fmt: str = "auto", encoding: str = "utf-8",
              quoting: str = "minimal") -> list[Example]:
    """Read one file into examples (through `datasets`: data/hf.py). Empty texts are skipped with a
    warning; a missing column, a bad line or a row without a label is an error naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist. Point the data config at it, e.g. data.path=/path/to/file.tsv."
        )
    fmt = detect_format(path, fmt)
    examples = read_file(path, fmt, text_column, label_column, encoding, quoting)
    if not examples:
        raise DataError(f"{path} holds no labelled examples.")
    return examples


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
    encoding: str = "utf-8",
    quoting: str = "minimal",
    dedupe: bool = False,
) -> DataSplits:
    """Any CSV/TSV/JSONL file(s) with a class split given inline (`classes`) or as a JSON file."""
    paths = [path] if isinstance(path, str) else list(path)
    examples = [e for p in paths for e in read_rows(p, text_column, label_column, format, encoding, quoting)]
    source = ", ".join(str(p) for p in paths)
    data = FewShotDataset(drop_duplicates(examples, source, dedupe), source=source)
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
