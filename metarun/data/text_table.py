"""Reader for labelled text tables: CSV, TSV, JSONL and parquet files with a text and a label column,
read through Hugging Face `datasets` (data/hf.py), split by class lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metarun.data.class_splits import make_splits, resolve_class_split
from metarun.data.dataset import DataSplits, Example, FewShotDataset, drop_duplicates
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
    oos_label: str | None = None,
) -> DataSplits:
    """Any CSV/TSV/JSONL file(s) with a class split given inline (`classes`) or as a JSON file;
    `oos_label`: the label of out-of-scope rows (queries to reject), which form no class."""
    paths = [path] if isinstance(path, str) else list(path)
    examples = [e for p in paths for e in read_rows(p, text_column, label_column, format, encoding, quoting)]
    source = ", ".join(str(p) for p in paths)
    data = FewShotDataset(drop_duplicates(examples, source, dedupe), source=source)
    cs = resolve_class_split(name, classes, split_file, split)
    return make_splits(name, data, cs, train_per_class, subsample_seed, oos_label)
