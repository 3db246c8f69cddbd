"""CLINC150's out-of-scope evaluation file (`data=clinc_oos`): `data_full.json` of Larson et al.,
"An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction" (EMNLP 2019; CC BY 3.0,
https://github.com/clinc/oos-eval, data/data_full.json). metarun ships no copy: put the files in
$METARUN_DATA_DIR/clinc150 (data.condition picks one of Larson et al.'s four data conditions: full,
small, imbalanced, oos_plus -> data_<condition>.json) or point data.path at one file.

The file holds {"train", "val", "test"}: [text, intent] rows of the 150 in-scope intents (100 / 20 / 30
per intent) and {"oos_train", "oos_val", "oos_test"}: 100 / 100 / 1,000 out-of-scope utterances.
Few-shot episodes pool the in-scope rows and split them by class (the ProtAugment CLINC150 splits by
default, the same classes as data=clinc150); the out-of-scope rows keep their own split. The "K per
intent" protocol (eval=per_class) keeps the file's own train / val / test rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from metarun.data.class_splits import make_splits, resolve_class_split
from metarun.data.dataset import DataSplits, Example, FewShotDataset, LabelledSplits, drop_duplicates
from metarun.errors import DataError

SOURCE = "https://github.com/clinc/oos-eval (data/data_full.json)"
PARTS = ("train", "val", "test")
# Larson et al.'s data conditions (Table 1): in-scope training rows per intent, oos_train rows
CONDITIONS = {"full": "100 per intent, 100 oos_train", "small": "50 per intent, 100 oos_train",
              "imbalanced": "25, 50, 75 or 100 per intent, 100 oos_train", "oos_plus": "100 per intent, 250 oos_train"}


def check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise DataError(f"data.condition={condition!r} is not valid; choose one of Larson et al.'s data conditions: "
                        + ", ".join(f"{c} ({what})" for c, what in CONDITIONS.items()) + ".")


def read_clinc_oos(path: str | Path) -> dict[str, list[Example]]:
    """{part: examples} for the in-scope parts and "oos_<part>" of `path`; a file of another shape is
    named with what it lacks."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.path={str(path)!r}: no such file. data=clinc_oos reads CLINC150's data_<condition>.json "
                        f"files from {SOURCE}; download them into $METARUN_DATA_DIR/clinc150 (or set data.path to "
                        f"one file).")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a JSON file ({e}); data=clinc_oos reads data_full.json from "
                        f"{SOURCE}.") from None
    keys = [*PARTS, *(f"oos_{p}" for p in PARTS)]
    missing = [k for k in keys if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise DataError(f"{path} lacks {missing}: data=clinc_oos reads the OOS-eval layout of data_full.json "
                        f"({', '.join(keys)}: lists of [text, intent]) from {SOURCE}.")
    out = {}
    for key in keys:
        rows = raw[key]
        bad = next((i for i, r in enumerate(rows) if not (isinstance(r, list) and len(r) == 2)), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad} of {key!r} is {rows[bad]!r}, not [text, intent].")
        out[key] = [Example(str(text), str(label)) for text, label in rows]
    return out


def load_clinc_oos(
    name: str,
    path: str,
    split_file: str | None = "clinc150",
    split: int | str = 1,
    classes: dict | None = None,
    train_per_class: int | None = None,
    subsample_seed: int = 0,
    dedupe: bool = False,
    condition: str = "full",
) -> DataSplits:
    """In-scope rows split by class; out-of-scope pools: oos_train, oos_val and oos_test. `condition`
    names the file in the config's default `path` (data_<condition>.json), checked here."""
    check_condition(condition)
    parts = read_clinc_oos(path)
    source = f"{Path(path).expanduser()}"
    rows = [e for p in PARTS for e in parts[p]]
    data = FewShotDataset(drop_duplicates(rows, source, dedupe), source=source)
    splits = make_splits(name, data, resolve_class_split(name, classes, split_file, split), train_per_class,
                         subsample_seed)
    oos = {p: FewShotDataset(tuple(parts[f"oos_{p}"]), f"{source} [oos_{p}]") for p in PARTS}
    return DataSplits(splits.name, splits.train, splits.val, splits.test, oos=oos)


def load_clinc_oos_labelled(name: str, path: str) -> LabelledSplits:
    """All 150 intents: the file's train rows as the labelled pool (and oos_train, for a classifier
    with out-of-scope as a class), its val rows (with oos_val) for choosing a rejection threshold, its
    test rows (with oos_test) scored: Larson et al.'s protocol."""
    parts = read_clinc_oos(path)
    source = f"{Path(path).expanduser()}"
    sets = {p: FewShotDataset(tuple(parts[p]), f"{source} [{p}]") for p in PARTS}
    oos = {p: FewShotDataset(tuple(parts[f"oos_{p}"]), f"{source} [oos_{p}]") for p in PARTS}
    return LabelledSplits(name, sets["train"], sets["test"], val=sets["val"], oos=oos)
