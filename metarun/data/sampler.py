"""Episode samplers: indices only, no text, no tensors.

Episode `i` is a pure function of `(seed, i)` (numpy SeedSequence), so a resumed run needs one
integer and DataLoader workers cannot disturb the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarun.data.dataset import FewShotDataset
from metarun.data.multitask import task_of
from metarun.errors import ConfigError, DataError, check_choice, check_int, check_number


@dataclass(frozen=True)
class EpisodeSpec:
    """`support_idx` is (N*K,) and `query_idx` (N*Q,), grouped by class: label = position // K (or // Q)."""

    classes: tuple[str, ...]
    support_idx: tuple[int, ...]
    query_idx: tuple[int, ...]
    k_shot: int
    n_query: int
    labels: tuple[int, ...] | None = None  # explicit query labels (single-query episodes)
    n_na: int = 0  # none-of-the-above queries after the N*Q others, from classes outside the episode; label N

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def support_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_way), self.k_shot)

    def query_labels(self) -> np.ndarray:
        if self.labels is not None:
            return np.asarray(self.labels, dtype=np.int64)
        return np.concatenate([np.repeat(np.arange(self.n_way), self.n_query), np.full(self.n_na, self.n_way)])


class EpisodeSampler:
    """N-way K-shot episodes with Q queries per class from the classes of one dataset, or with one
    query in all (`single_query`: FewRel's official protocol; its class is drawn uniformly).
    `na_rate` > 0 adds na_rate * Q none-of-the-above queries (FewRel 2.0), each an instance of a
    random class outside the episode, labelled N; or, with `na_class`, distinct examples of that class,
    which is never an episode class (out-of-scope queries: `eval.test.oos_rate`)."""

    def __init__(self, dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int, seed: int, role: str = "train",
                 single_query: bool = False, na_rate: int = 0, na_class: str | None = None):
        group = "sampler" if role in ("train", "training") else f"eval.{role}"  # where the settings come from
        shot = "k_shot" if group == "sampler" else "shots"
        for name, value in (("n_way", n_way), ("n_query", n_query)):
            check_int(f"{group}.{name}", value)
        check_int(f"{group}.{shot}", k_shot, 0 if group != "sampler" else 1)  # K = 0 (names alone): evaluation only
        classes = [c for c in dataset.classes if c != na_class]
        n_classes = len(classes)
        if n_way > n_classes:
            raise DataError(
                f"{role} episodes ask for {n_way}-way tasks but {dataset.source} has only {n_classes} classes; "
                f"lower {group}.n_way to at most {n_classes} or use a larger class split."
            )
        need = k_shot + n_query
        short = [(c, dataset.count(c)) for c in classes if dataset.count(c) < need]
        if short:
            listing = ", ".join(f"{c!r} has {n}" for c, n in short[:5])
            raise DataError(
                f"{role} episodes need K+Q = {k_shot}+{n_query} = {need} examples per class, but in "
                f"{dataset.source} {listing}{' (and more)' if len(short) > 5 else ''}. Lower {group}.{shot} or "
                f"{group}.n_query, or drop the class from the split."
            )
        self.dataset, self.n_way, self.k_shot, self.n_query, self.seed = dataset, n_way, k_shot, n_query, seed
        check_int(f"{group}.na_rate", na_rate, 0)
        if na_rate and single_query:
            raise ConfigError(f"{role} episodes: none-of-the-above queries (na_rate) need n_query per class, "
                              f"not single_query.")
        if na_rate and na_class is None and n_way >= n_classes:
            raise DataError(f"{role} episodes: none-of-the-above queries come from classes outside the episode, but "
                            f"{dataset.source} has only {n_classes} classes for {n_way}-way episodes; lower n_way.")
        if na_rate and na_class is not None and dataset.count(na_class) < na_rate * n_query:
            raise DataError(f"{role} episodes take {na_rate} x {n_query} out-of-scope queries each, but "
                            f"{dataset.source} has {dataset.count(na_class)}; lower eval.{role}.oos_rate.")
        self.single_query, self.na_rate, self.na_class = single_query, na_rate, na_class
        self._classes = classes

    def __getitem__(self, i: int) -> EpisodeSpec:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, i]))
        chosen = rng.choice(len(self._classes), size=self.n_way, replace=False)
        target = int(rng.integers(self.n_way)) if self.single_query else -1
        support, query = [], []
        for position, c in enumerate(chosen):
            pool = self.dataset.indices_of(self._classes[c])
            n_query = (position == target) if self.single_query else self.n_query
            picks = rng.choice(len(pool), size=self.k_shot + n_query, replace=False)
            support.extend(pool[j] for j in picks[: self.k_shot])
            query.extend(pool[j] for j in picks[self.k_shot :])
        n_na = self.na_rate * self.n_query
        if n_na and self.na_class is not None:  # out-of-scope queries: distinct examples of that pool
            pool = self.dataset.indices_of(self.na_class)
            query.extend(pool[j] for j in rng.choice(len(pool), size=n_na, replace=False))
        elif n_na:
            others = np.setdiff1d(np.arange(len(self._classes)), chosen)
            for c in rng.choice(others, size=n_na):
                pool = self.dataset.indices_of(self._classes[c])
                query.append(pool[int(rng.integers(len(pool)))])
        return EpisodeSpec(tuple(self._classes[c] for c in chosen), tuple(support), tuple(query), self.k_shot,
                           self.n_query, labels=(target,) if self.single_query else None, n_na=n_na)


@dataclass(frozen=True)
class BatchSpec:
    """A supervised mini-batch: `support_idx` with labels = positions of their classes in `classes`
    (all classes of the dataset); no query set."""

    classes: tuple[str, ...]
    support_idx: tuple[int, ...]
    labels: tuple[int, ...]
    query_idx: tuple[int, ...] = ()

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def support_labels(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)

    def query_labels(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)


class BatchSampler:
    """Mini-batches over all classes of a dataset, for supervised (pre-)training (`sampler=batches`).

    Epoch e visits every example once in the order of a permutation drawn from (seed, e); batch i is
    the i-th run of `batch_size` positions of that stream, so it is a pure function of (seed, i)
    like an episode, and a resumed run continues the same stream.
    """

    def __init__(self, dataset: FewShotDataset, batch_size: int, seed: int, role: str = "training"):
        check_int("sampler.batch_size", batch_size)
        if len(dataset) < batch_size:
            raise DataError(f"{role} batches of {batch_size} need at least that many examples; "
                            f"{dataset.source} has {len(dataset)}. Lower sampler.batch_size.")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._classes = tuple(dataset.classes)
        position = {c: i for i, c in enumerate(self._classes)}
        self._labels = np.asarray([position[e.label] for e in dataset.examples])
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, permutation): batches walk epochs in order

    def _epoch(self, e: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != e:
            perm = np.random.default_rng(np.random.SeedSequence([self.seed, e])).permutation(len(self.dataset))
            self._cached = (e, perm)
        return self._cached[1]

    def __getitem__(self, i: int) -> BatchSpec:
        n = len(self.dataset)
        start = i * self.batch_size
        idx: list[int] = []
        while len(idx) < self.batch_size:
            epoch, offset = divmod(start + len(idx), n)
            idx.extend(self._epoch(epoch)[offset : offset + self.batch_size - len(idx)].tolist())
        return BatchSpec(self._classes, tuple(idx), tuple(int(self._labels[j]) for j in idx))


@dataclass(frozen=True)
class MultiTaskSpec(BatchSpec):
    """Batches of several tasks back to back: `slices` = ((task, start, end), ...); labels are class
    positions within each task's own class list."""

    slices: tuple[tuple[str, int, int], ...] = ()

    @property
    def extra(self) -> dict:
        return {"tasks": self.slices}


SAMPLING = ("uniform", "proportional", "temperature")


def task_probabilities(sizes: list[int], sampling: str, temperature: float = 2.0, cap: int | None = None) -> np.ndarray:
    """Probability of drawing each task (jiant's samplers): uniform, proportional to its size, or
    proportional to min(size, cap) ** (1 / temperature)."""
    n = np.asarray(sizes, dtype=np.float64)
    if sampling == "uniform":
        return np.full(len(n), 1.0 / len(n))
    if sampling == "proportional":
        return n / n.sum()
    p = np.minimum(n, cap if cap else np.inf) ** (1.0 / temperature)
    return p / p.sum()


class MultiTaskSampler:
    """Training steps for multi-task learning over a dataset whose labels are `task/class`.

    `tasks_per_step=all`: every step holds one batch of `batch_size` from every task (what loss
    weighting needs: all task losses at once). `tasks_per_step=one`: each step draws one task by
    `sampling` (uniform, proportional, or temperature-scaled with a size cap). Step i is a pure
    function of (seed, i); examples are drawn without replacement within a step.
    """

    def __init__(self, dataset: FewShotDataset, batch_size: int, seed: int, tasks_per_step: str = "all",
                 sampling: str = "uniform", temperature: float = 2.0, cap: int | None = None, role: str = "training"):
        check_choice("sampler.tasks_per_step", tasks_per_step, ("all", "one"))
        check_choice("sampler.sampling", sampling, SAMPLING)
        check_int("sampler.batch_size", batch_size)
        check_number("sampler.temperature", temperature, 0, low_open=True)
        self.dataset, self.batch_size, self.seed, self.tasks_per_step = dataset, batch_size, seed, tasks_per_step
        self._classes = tuple(dataset.classes)
        self.tasks = sorted({task_of(c) for c in self._classes})
        self.task_classes = {t: [c for c in self._classes if task_of(c) == t] for t in self.tasks}
        self.task_indices = {t: [i for c in self.task_classes[t] for i in dataset.indices_of(c)] for t in self.tasks}
        for t, idx in self.task_indices.items():
            if len(idx) < batch_size:
                raise DataError(
                    f"task {t!r} has {len(idx)} training examples, fewer than sampler.batch_size={batch_size}."
                )
        self.probs = task_probabilities([len(self.task_indices[t]) for t in self.tasks], sampling, temperature, cap)
        # label of each example: the position of its class within its task's classes
        self._labels = {
            i: k for t in self.tasks for k, c in enumerate(self.task_classes[t]) for i in dataset.indices_of(c)
        }

    def __getitem__(self, i: int) -> MultiTaskSpec:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, i]))
        tasks = self.tasks if self.tasks_per_step == "all" else [self.tasks[rng.choice(len(self.tasks), p=self.probs)]]
        idx, labels, slices = [], [], []
        for t in tasks:
            pool = self.task_indices[t]
            picks = [pool[j] for j in rng.choice(len(pool), size=self.batch_size, replace=False)]
            slices.append((t, len(idx), len(idx) + len(picks)))
            idx += picks
            labels += [self._labels[j] for j in picks]
        return MultiTaskSpec(self._classes, tuple(idx), tuple(labels), slices=tuple(slices))
