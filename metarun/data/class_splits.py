"""Class splits: which classes are for training, validation and test.

Published splits ship as JSON files in `configs/class_splits/` ({"splits": {"1": {"train": [...],
"val": [...], "test": [...]}}}); a data config names one by file stem or path, or lists classes inline.
`valid`, `validation` and `dev` are accepted for `val`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from metarun.data.dataset import DataSplits, FewShotDataset, split_by_classes
from metarun.errors import ConfigError, DataError, check_int
from metarun.paths import config_dir


@dataclass(frozen=True)
class ClassSplit:
    train: list[str]
    val: list[str]
    test: list[str]
    where: str  # for error messages


def available_split_files() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "class_splits").glob("*.json"))


def load_split_file(split_file: str, split: int | str) -> ClassSplit:
    path = Path(split_file).expanduser()
    if not path.suffix:
        path = config_dir() / "class_splits" / f"{split_file}.json"
    if not path.is_file():
        raise ConfigError(
            f"class-split file {path} does not exist. Use a path to a JSON file or one of the shipped "
            f"splits: {', '.join(available_split_files())}."
        )
    try:
        splits = json.loads(path.read_text())["splits"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path} is not a class-split file ({e}); expected {{'splits': {{'1': {{'train': [...], ...}}}}}}."
        ) from None
    key = str(split)
    if key not in splits:
        raise ConfigError(f"data.split={split!r} is not valid for {path.name}; choose one of: {', '.join(splits)}.")
    return _from_dict(splits[key], f"{path} (split {key})")


ALIASES = {"valid": "val", "validation": "val", "dev": "val"}  # other names split files use for "val"


def _from_dict(d: dict, where: str) -> ClassSplit:
    d = {ALIASES.get(k, k): v for k, v in d.items()}
    missing = [k for k in ("train", "val", "test") if k not in d]
    if missing:
        raise ConfigError(f"the class split in {where} lacks {missing}; give train, val and test class lists.")
    return ClassSplit([str(c) for c in d["train"]], [str(c) for c in d["val"]], [str(c) for c in d["test"]], where)


def resolve_class_split(name: str, classes: dict | None, split_file: str | None, split: int | str) -> ClassSplit:
    if classes is not None:
        return _from_dict(dict(classes), f"data.classes of data={name}")
    if split_file is not None:
        return load_split_file(split_file, split)
    raise ConfigError(
        f"data={name} needs a class split: set data.split_file (one of {', '.join(available_split_files())}, "
        f"or a JSON path) or data.classes={{train: [...], val: [...], test: [...]}}."
    )


def make_splits(
    name: str,
    data: FewShotDataset,
    cs: ClassSplit,
    train_per_class: int | None,
    subsample_seed: int,
    oos_label: str | None = None,
) -> DataSplits:
    """`data` split by the class split `cs`; `oos_label`: that label's examples form no class but the
    out-of-scope pools, half (seeded) for validation and half for test (`split_out_of_scope`)."""
    data, oos = split_out_of_scope(data, oos_label, cs)
    splits = split_by_classes(name, data, cs.train, cs.val, cs.test, cs.where)
    if train_per_class is not None:
        splits = replace(splits, train=subsample_per_class(splits.train, train_per_class, subsample_seed))
    return replace(splits, oos=oos)


def take_out_of_scope(data: FewShotDataset, oos_label: str | None) -> tuple[FewShotDataset, FewShotDataset]:
    """(the in-scope examples, the ones labelled `oos_label`); an unknown label is named with the labels
    the data has."""
    if oos_label is None:
        return data, FewShotDataset((), data.source)
    if oos_label not in data.classes:
        raise DataError(
            f"data.oos_label={oos_label!r}: {data.source} has no example with that label; its labels include "
            f"{data.classes[:8]}. Give the label its out-of-scope rows carry, or leave data.oos_label=null."
        )
    in_scope = data.subset([c for c in data.classes if c != oos_label])
    return in_scope, FewShotDataset(tuple(data[i] for i in data.indices_of(oos_label)),
                                    f"{data.source} [out-of-scope: {oos_label}]")


def split_out_of_scope(
    data: FewShotDataset, oos_label: str | None, cs: ClassSplit, seed: int = 0
) -> tuple[FewShotDataset, dict[str, FewShotDataset]]:
    """The in-scope examples, and the out-of-scope ones as {"val": half, "test": the other half}
    (a seeded split of one pool; data with its own out-of-scope splits, such as CLINC150's
    data_full.json, keeps those instead). A class split that names the label is refused."""
    parts = (("train", cs.train), ("val", cs.val), ("test", cs.test))
    named = [part for part, classes in parts if oos_label is not None and oos_label in classes]
    if named:
        raise DataError(
            f"data.oos_label={oos_label!r} is a {named[0]} class in {cs.where}, but out-of-scope examples never "
            f"form a class; remove {oos_label!r} from the class split."
        )
    data, oos = take_out_of_scope(data, oos_label)
    if not len(oos):
        return data, {}
    order = np.random.default_rng(seed).permutation(len(oos))
    half = len(oos) // 2

    def part(rows, what: str) -> FewShotDataset:
        return FewShotDataset(tuple(oos[int(i)] for i in sorted(rows)), f"{oos.source}, {what}")

    return data, {"val": part(order[:half], "validation half"), "test": part(order[half:], "test half")}


def subsample_per_class(data: FewShotDataset, per_class: int, seed: int) -> FewShotDataset:
    """Keep at most `per_class` examples of each class, chosen by a fixed seed (low-data profiles)."""
    check_int("data.train_per_class", per_class, 1, null="every example")
    rng = np.random.default_rng(seed)
    keep = sorted(i for c in data.classes for i in _choose(rng, data.indices_of(c), per_class))
    return FewShotDataset(tuple(data[i] for i in keep), f"{data.source}, {per_class} per class")


def _choose(rng, indices: tuple[int, ...], k: int) -> list[int]:
    if len(indices) <= k:
        return list(indices)
    return [indices[j] for j in rng.choice(len(indices), size=k, replace=False)]
