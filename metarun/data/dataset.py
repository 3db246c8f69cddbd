"""Immutable, class-indexed datasets: the contract between readers and samplers.

A dataset holds examples and knows, for each class, which indices belong to it. It has no RNG and
no tensors; samplers draw indices from it and the collate step turns examples into tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from metarun.errors import DataError

log = logging.getLogger("metarun")


@dataclass(frozen=True)
class Example:
    """One labelled instance.

    `text` is the raw sentence. Relation instances also carry `tokens` and the head / tail entity
    spans as (first, last) token positions, inclusive, so encoders can insert entity markers. A pair
    input (NLI-style, `data.text_pair_column`) has its second text in `text_pair`; transformer
    encoders read the two as one sequence pair.
    """

    text: str
    label: str
    tokens: tuple[str, ...] | None = None
    head: tuple[int, int] | None = None
    tail: tuple[int, int] | None = None
    text_pair: str | None = None


def drop_duplicates(examples: Sequence[Example], where: str, drop: bool) -> tuple[Example, ...]:
    """`examples` without the ones that repeat an earlier example of the same class word for word when
    `drop` (data.dedupe=true); otherwise all of them, with a warning when there are such repeats: a
    query can then be its own support example and score a perfect episode."""
    seen, repeats = set(), []
    for i, e in enumerate(examples):
        key = (e.label, e.text, e.text_pair, e.tokens, e.head, e.tail)
        if key in seen:
            repeats.append(i)
        seen.add(key)
    if not repeats:
        return tuple(examples)
    if drop:
        log.info("%s: dropped %d exact duplicates (data.dedupe=true)", where, len(repeats))
        skip = set(repeats)
        return tuple(e for i, e in enumerate(examples) if i not in skip)
    log.warning("%s: %d %s an earlier example of their class word for word, so a query can be its own "
                "support example; data.dedupe=true drops the repeats", where, len(repeats),
                "example repeats" if len(repeats) == 1 else "examples repeat")
    return tuple(examples)


@dataclass(frozen=True)
class FewShotDataset:
    """Examples of a set of classes. `source` names where they came from, for error messages."""

    examples: tuple[Example, ...]
    source: str
    _index: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[int]] = {}
        for i, ex in enumerate(self.examples):
            index.setdefault(ex.label, []).append(i)
        object.__setattr__(self, "_index", {c: tuple(v) for c, v in sorted(index.items())})

    @property
    def classes(self) -> list[str]:
        return list(self._index)

    def indices_of(self, label: str) -> tuple[int, ...]:
        try:
            return self._index[label]
        except KeyError:
            raise DataError(f"class {label!r} is not in {self.source}") from None

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, classes: Iterable[str], source: str | None = None) -> "FewShotDataset":
        keep = set(classes)
        return FewShotDataset(tuple(e for e in self.examples if e.label in keep), source or self.source)

    def count(self, label: str) -> int:
        return len(self._index.get(label, ()))


@dataclass(frozen=True)
class DataSplits:
    """Class-disjoint training, validation and test sets of one data source. `val_seen_classes`:
    validation uses held-out examples of the training classes (when too few classes exist for a
    separate validation split); `class_names`: readable names of class ids (FewRel relations);
    `heldout`: per training task, examples kept out of training (multi-task data; else empty);
    `oos`: out-of-scope examples by role ("val", "test", maybe "train"), which belong to no class
    (`data.oos_label`): queries a model should reject (`eval.test.oos_rate`)."""

    name: str
    train: FewShotDataset
    val: FewShotDataset
    test: FewShotDataset
    val_seen_classes: bool = False
    class_names: dict[str, str] = field(default_factory=dict)
    heldout: dict[str, FewShotDataset] = field(default_factory=dict)
    oos: dict[str, FewShotDataset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(parts[a].classes) & set(parts[b].classes)
            if (a, b) == ("train", "val") and self.val_seen_classes:
                continue
            if shared and parts[a] is not parts[b]:
                raise DataError(
                    f"data {self.name!r}: classes {sorted(shared)[:5]} are in both the {a} and {b} "
                    f"splits; few-shot classes must not leak into training. Fix the class split."
                )


def split_by_classes(
    name: str,
    data: FewShotDataset,
    train: Sequence[str],
    val: Sequence[str],
    test: Sequence[str],
    where: str,
) -> DataSplits:
    """Partition `data` by class lists, checking every listed class exists."""
    known = set(data.classes)
    for part, classes in (("train", train), ("val", val), ("test", test)):
        missing = [c for c in classes if c not in known]
        if missing:
            raise DataError(
                f"data {name!r}: the {part} class list in {where} names {len(missing)} class(es) "
                f"not found in {data.source}: {missing[:5]}. Known classes include "
                f"{sorted(known)[:8]}; check the spelling or the class-split file."
            )
    return DataSplits(
        name,
        data.subset(train, f"{data.source} [{part_name('train')}]"),
        data.subset(val, f"{data.source} [{part_name('val')}]"),
        data.subset(test, f"{data.source} [{part_name('test')}]"),
    )


def part_name(part: str) -> str:
    return {"train": "training classes", "val": "validation classes", "test": "test classes"}[part]


@dataclass(frozen=True)
class LabelledSplits:
    """The same classes in a labelled pool and a test set: the "K examples for every class" setting
    (classifiers are fitted on K pool examples per class and scored on the whole test set). `val`:
    in-scope examples and `oos` out-of-scope ones by role ("val", "test"), where the data has a reject
    label: the validation pair chooses a rejection threshold, the test set gains the test ones."""

    name: str
    pool: FewShotDataset
    test: FewShotDataset
    val: FewShotDataset | None = None
    oos: dict[str, FewShotDataset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unseen = sorted(set(self.test.classes) - set(self.pool.classes))
        if unseen:
            raise DataError(f"data {self.name!r}: test classes {unseen[:5]} have no examples in the pool "
                            f"({self.pool.source}); every test class needs labelled examples.")
