"""Reader for the FewRel JSON format (Han et al. 2018).

A file maps relation ids to instances: `{"P177": [{"tokens": [...], "h": [name, id, [[i, j, ...]]],
"t": [...]}, ...]}`. The head / tail spans are the token positions of the entity's first mention.
"""

from __future__ import annotations

import json
from pathlib import Path

from metarun.data.dataset import DataSplits, Example, FewShotDataset
from metarun.errors import DataError

OFFICIAL = "https://github.com/thunlp/FewRel (data/train_wiki.json, data/val_wiki.json)"


def read_fewrel(path: str | Path, relations: list[str] | None = None) -> FewShotDataset:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"FewRel file {path} does not exist. The official files come from {OFFICIAL} "
            f"(scripts/download_fewrel.py fetches them); point at the folder with data.root=DIR "
            f"or set METARUN_DATA_DIR."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read FewRel file {path}: {e}.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"FewRel file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
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

    return DataSplits(name, part(train_file, "train"), part(val_file, "val"), part(test_file, "test"))
