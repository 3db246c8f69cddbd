"""Several labelled sources for multi-task training, one target for few-shot evaluation.

Training classes of every source become tasks; class names are prefixed with the task name
(`clinc150/transfer`), so `train` is one dataset whose labels say which task they belong to. A fixed
fraction of each task's examples is held out to report per-task accuracy. Validation and test
episodes come from the target's validation and test classes, which no source may train on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from metarun.data.dataset import DataSplits, FewShotDataset
from metarun.errors import ConfigError, DataError, check_choice

SEP = "/"


def task_of(label: str) -> str:
    return label.split(SEP, 1)[0]


@dataclass(frozen=True)
class MultiTaskSplits(DataSplits):
    """`train`: all tasks' training examples (labels `task/class`); `heldout`: per task, examples
    kept out of training for per-task accuracy; `val`/`test`: the target's few-shot classes."""

    @property
    def tasks(self) -> list[str]:
        return sorted({task_of(c) for c in self.train.classes})


def load_multitask(name: str, sources: dict[str, DataSplits], target: str, heldout_fraction: float = 0.1,
                   seed: int = 0, train_on_target: bool = True, source_classes: str = "train") -> MultiTaskSplits:
    """`train_on_target=false` keeps the target out of training (it only gives the few-shot episodes:
    a leave-one-dataset-out transfer run); `source_classes=all` trains on every class of the other
    sources (their validation and test classes too), `train` on their training classes only."""
    if target not in sources:
        raise ConfigError(f"data.target={target!r} is not one of the sources: {', '.join(sources)}.")
    check_choice("data.source_classes", source_classes, ("train", "all"))
    tasks = {t: s for t, s in sources.items() if train_on_target or t != target}
    if len(tasks) < 2:
        raise ConfigError(f"multi-task data needs at least two training tasks, but {name} has {list(tasks)}; "
                          f"add sources (data.sources) or set data.train_on_target=true.")
    if not 0 <= heldout_fraction < 1:
        raise ConfigError(f"data.heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    tgt = sources[target]
    few_shot = set(tgt.val.classes) | set(tgt.test.classes)
    rng = np.random.default_rng(seed)
    train, heldout = [], {}
    for task, splits in tasks.items():
        if SEP in task:
            raise ConfigError(f"task name {task!r} must not contain {SEP!r}.")
        leaked = sorted(set(splits.train.classes) & few_shot) if task == target else []
        if leaked:
            raise DataError(f"task {task!r} trains on the target's few-shot classes {leaked[:5]}; fix the class split.")
        pool = splits.train
        if source_classes == "all" and task != target:
            pool = FewShotDataset(
                splits.train.examples + splits.val.examples + splits.test.examples, splits.train.source
            )
        kept = []
        for c in pool.classes:
            idx = list(pool.indices_of(c))
            rng.shuffle(idx)
            n_out = round(heldout_fraction * len(idx)) if len(idx) > 1 else 0
            kept += [(i, c, j < n_out) for j, i in enumerate(idx)]
        relabelled = [(replace(pool[i], label=f"{task}{SEP}{c}"), out) for i, c, out in kept]
        train += [e for e, out in relabelled if not out]
        heldout[task] = FewShotDataset(tuple(e for e, out in relabelled if out), f"{pool.source} [held out]")
    data = FewShotDataset(tuple(train), f"multi-task {name}: {', '.join(tasks)}")
    return MultiTaskSplits(name, data, tgt.val, tgt.test, heldout=heldout)
