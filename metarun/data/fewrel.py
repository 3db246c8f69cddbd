"""Reader for the FewRel JSON format (Han et al. 2018).

A file maps relation ids to instances: `{"P177": [{"tokens": [...], "h": [name, id, [[i, j, ...]]],
"t": [...]}, ...]}`. The head / tail spans are the token positions of the entity's first mention.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metarun.data.dataset import DataSplits, Example, FewShotDataset
from metarun.errors import ConfigError, DataError

log = logging.getLogger(__name__)

OFFICIAL = "https://github.com/thunlp/FewRel (data/train_wiki.json, data/val_wiki.json)"


ROOT_HINT = "point at the folder with data.root=DIR or set METARUN_DATA_DIR"


def read_fewrel(path: str | Path, relations: list[str] | None = None, hint: str = ROOT_HINT) -> FewShotDataset:
    """`hint`: how the user points at the file (the folder options, or a file path option)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"FewRel file {path} does not exist. The official files come from {OFFICIAL} "
            f"(scripts/download_fewrel.py fetches them); {hint}."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read FewRel file {path}: {e}.") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"FewRel file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from None
    if not isinstance(raw, dict):
        raise DataError(f"FewRel file {path} must hold a JSON object mapping relation ids to instance lists.")
    if relations is not None:
        unknown = [r for r in relations if r not in raw]
        if unknown:
            raise DataError(f"relations {unknown[:5]} are not in FewRel file {path}; it has {sorted(raw)[:10]}...")
        raw = {r: raw[r] for r in relations}
    examples = []
    for rel, instances in raw.items():
        if not isinstance(instances, list):
            raise DataError(f"FewRel file {path}, relation {rel}: expected a list of instances.")
        for n, inst in enumerate(instances):
            examples.append(_instance(path, rel, n, inst))
    return FewShotDataset(tuple(examples), source=f"FewRel file {path}")


def _instance(path: Path, rel: str, n: int, inst: object) -> Example:
    where = f"FewRel file {path}, relation {rel}, instance {n}"
    if not isinstance(inst, dict) or not {"tokens", "h", "t"} <= set(inst):
        raise DataError(f"{where}: expected an object with 'tokens', 'h' and 't'.")
    tokens = inst["tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: 'tokens' must be a non-empty list of strings.")
    spans = []
    for key in ("h", "t"):
        ent = inst[key]
        try:
            positions = [int(i) for i in ent[2][0]]
        except (TypeError, IndexError, ValueError):
            raise DataError(f"{where}: '{key}' must be [name, id, [[token positions...]]], got {ent!r:.80}.") from None
        if not positions or min(positions) < 0 or max(positions) >= len(tokens):
            raise DataError(f"{where}: '{key}' span {positions} lies outside the sentence of {len(tokens)} tokens.")
        spans.append((min(positions), max(positions)))
    return Example(text=" ".join(tokens), label=rel, tokens=tuple(tokens), head=spans[0], tail=spans[1])


def load_fewrel(
    name: str,
    root: str,
    train_file: str,
    val_file: str,
    test_file: str,
    classes: dict | None = None,
) -> DataSplits:
    """Official layout: train on `train_file`'s relations, validate and test on the others.

    When validation and test share a file (FewRel's test set is hidden, so papers test on val_wiki),
    the same dataset object serves both. `classes` optionally restricts each part to listed relations.
    """
    classes = dict(classes or {})
    cache: dict[tuple, FewShotDataset] = {}

    def part(file: str, key: str) -> FewShotDataset:
        rels = list(classes[key]) if classes.get(key) is not None else None
        k = (file, tuple(rels) if rels else None)
        if k not in cache:
            cache[k] = read_fewrel(Path(root).expanduser() / file, rels)
        return cache[k]

    return DataSplits(
        name,
        part(train_file, "train"),
        part(val_file, "val"),
        part(test_file, "test"),
        class_names=relation_names(root),
    )


def relation_names(root: str | Path, file: str = "pid2name.json") -> dict[str, str]:
    """{relation id: name} from FewRel's pid2name.json (`{"P177": ["crosses", "description"]}`); empty
    when the file is absent (names are a convenience for logs and tables)."""
    path = Path(root).expanduser() / file
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {pid: str(v[0]) for pid, v in raw.items()}
    except (json.JSONDecodeError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{path} must map relation ids to [name, description] lists ({e}).") from None


def load_fewrel_split(
    name: str,
    root: str,
    file: str,
    train: Sequence[str],
    test: Sequence[str],
    val_per_class: int = 100,
    seed: int = 0,
    names_file: str = "pid2name.json",
) -> DataSplits:
    """One FewRel file split by relation: `train` relations for meta-training, `test` relations for
    test episodes, and validation episodes from `val_per_class` held-out instances of each training
    relation (a fixed random choice per `seed`)."""
    train, test = list(train), list(test)
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise ConfigError(f"data {name}: relations {overlap} are both training and test relations.")
    data = read_fewrel(Path(root).expanduser() / file, train + test)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for rel in train:
        idx = np.asarray(data.indices_of(rel))
        if len(idx) <= val_per_class:
            raise DataError(
                f"data {name}: relation {rel} in {data.source} has {len(idx)} instances, too few to "
                f"hold out data.val_per_class={val_per_class} for validation."
            )
        held = set(rng.choice(len(idx), size=val_per_class, replace=False).tolist())
        for j, i in enumerate(idx.tolist()):
            (val_idx if j in held else train_idx).append(i)
    part = lambda idx, what: FewShotDataset(tuple(data[i] for i in sorted(idx)), f"{data.source} [{what}]")  # noqa: E731
    test_part = data.subset(test, f"{data.source} [test relations]")
    names = relation_names(root, names_file)
    log.info("%s: train relations %s; test relations %s", name, _named(train, names), _named(test, names))
    return DataSplits(
        name,
        part(train_idx, "training relations"),
        part(val_idx, "held-out instances of the training relations"),
        test_part,
        val_seen_classes=True,
        class_names=names,
    )


def load_fewrel_file(name: str, path: str, names_file: str | None = None) -> DataSplits:
    """Every relation of one FewRel-format file as test relations: a target for `eval.test.data`
    (domain adaptation, e.g. meta-train on wiki, test on FewRel 2.0's val_pubmed.json)."""
    data = read_fewrel(path, hint="point at it with data.path=FILE (eval.test.data.path=FILE for a test target)")
    empty = FewShotDataset((), f"{data.source} [unused]")
    names = relation_names(Path(path).expanduser().parent, names_file) if names_file else {}
    return DataSplits(name, empty, empty, data, class_names=names)


def _named(relations: Sequence[str], names: dict[str, str]) -> str:
    return ", ".join(f"{r} ({names[r]})" if r in names else r for r in relations)
