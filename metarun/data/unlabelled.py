"""Unlabelled text of a target domain (`unlabelled=file unlabelled.path=...`, or another data config's
training split: `unlabelled=data +data@unlabelled.data=banking77`), read by objectives that adapt an
encoder to that domain (objective=adversarial, and mlm / consistency with `source: unlabelled`).

Formats, by the file's suffix:
- `.json`: FewRel 2.0's unsupervised list (`pubmed_unsupervised.json`: `[{"tokens", "h", "t"}, ...]`,
  entity markers kept), or a list of strings;
- `.jsonl`: one object per line, the text in `column`;
- `.csv` / `.tsv`: a header row, the text in `column`;
- `.txt`: one sentence per line.

The stream never holds a validation or test sentence of the run (or of its test target): those are
dropped, counted in the log, unless `allow_eval_text=true` says the user means to read them, and then
the run's results record `reads_test_unlabelled`. Objectives draw their batches with the global torch
RNG, so a resumed run draws the same sentences.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from metarun.data.dataset import DataSplits, Example
from metarun.errors import ConfigError, DataError, check_int

log = logging.getLogger("metarun")
LABEL = "<unlabelled>"  # the label every unlabelled example carries (never read)
FORMATS = (".json", ".jsonl", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class UnlabelledText:
    """Target-domain sentences without labels, and where they came from."""

    examples: tuple[Example, ...]
    source: str
    allow_eval_text: bool = False
    dropped: int = 0  # validation / test sentences of the run removed from the stream

    def __len__(self) -> int:
        return len(self.examples)

    def draw(self, n: int) -> list[Example]:
        """`n` examples drawn with replacement by the global torch RNG (restored on resume)."""
        idx = torch.randint(len(self.examples), (n,)).tolist()
        return [self.examples[i] for i in idx]

    def without(self, texts: Iterable[str]) -> "UnlabelledText":
        """The stream less the sentences in `texts` (the run's validation and test sentences), unless
        `allow_eval_text`."""
        if self.allow_eval_text:
            return self
        held = set(texts)
        kept = tuple(e for e in self.examples if e.text not in held)
        if not kept:
            raise DataError(f"every sentence of the unlabelled text ({self.source}) is a validation or test sentence "
                            f"of this run; point unlabelled at other text, or set unlabelled.allow_eval_text=true.")
        dropped = len(self.examples) - len(kept)
        if dropped:
            log.info("unlabelled: %d sentences that are validation or test sentences of this run left out", dropped)
        return UnlabelledText(kept, self.source, False, self.dropped + dropped)

    def record(self) -> dict:
        """What results.json says of it."""
        return {"source": self.source, "examples": len(self), "eval_text_dropped": self.dropped,
                "allow_eval_text": self.allow_eval_text}


def read_unlabelled(path: str, column: str = "text", max_examples: int | None = None,
                    allow_eval_text: bool = False) -> UnlabelledText:
    """The sentences of one file (see the module docstring for formats); the first `max_examples`."""
    check_int("unlabelled.max_examples", max_examples, 1, null="all")
    file = Path(path).expanduser()
    if file.suffix not in FORMATS:
        raise ConfigError(f"unlabelled.path={path}: the format is told by the suffix, one of {', '.join(FORMATS)}; "
                          f"rename the file or convert it.")
    if not file.is_file():
        raise DataError(f"unlabelled.path={path} does not exist; give the file of unlabelled target-domain text.")
    try:
        examples = list(_read(file, column))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"cannot read unlabelled text {file}: {e}.") from None
    if not examples:
        raise DataError(f"unlabelled text {file} holds no sentence.")
    examples = examples[:max_examples] if max_examples else examples
    log.info("unlabelled: %d sentences from %s", len(examples), file)
    return UnlabelledText(tuple(examples), str(file), bool(allow_eval_text))


def _read(file: Path, column: str) -> Iterable[Example]:
    from metarun.data.fewrel import _instance

    if file.suffix == ".txt":
        yield from (Example(line.strip(), LABEL) for line in file.read_text(encoding="utf-8").splitlines()
                    if line.strip())
    elif file.suffix == ".json":
        raw = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(raw, list):
            raise DataError(f"unlabelled text {file} must be a JSON list (FewRel 2.0's unsupervised file, or strings).")
        for n, item in enumerate(raw):
            if isinstance(item, str):
                yield Example(item, LABEL)
            else:  # a FewRel instance: tokens and entity spans, for encoders with entity markers
                yield _instance(file, LABEL, n, item)
    else:
        rows = (json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()) \
            if file.suffix == ".jsonl" else csv.DictReader(file.open(encoding="utf-8", newline=""),
                                                            delimiter="\t" if file.suffix == ".tsv" else ",")
        for n, row in enumerate(rows):
            if column not in row:
                raise DataError(f"unlabelled text {file}, row {n + 1}: no column {column!r} (it has "
                                f"{', '.join(map(str, row))}); set unlabelled.column.")
            if str(row[column]).strip():
                yield Example(str(row[column]), LABEL)


def from_data(data: DataSplits, max_examples: int | None = None, allow_eval_text: bool = False) -> UnlabelledText:
    """The training split of another data config, its labels dropped (`+data@unlabelled.data=banking77`)."""
    check_int("unlabelled.max_examples", max_examples, 1, null="all")
    if not isinstance(data, DataSplits):
        raise ConfigError("unlabelled.data must be a data config with a training split, e.g. "
                          "+data@unlabelled.data=banking77.")
    examples = tuple(Example(e.text, LABEL, e.tokens, e.head, e.tail, e.text_pair) for e in data.train.examples)
    examples = examples[:max_examples] if max_examples else examples
    log.info("unlabelled: %d sentences of %s's training classes", len(examples), data.name)
    return UnlabelledText(examples, f"{data.name} training split", bool(allow_eval_text))


def from_oos_pool(run_data: DataSplits, max_examples: int | None = None, allow_eval_text: bool = False
                  ) -> UnlabelledText:
    """The run's own training out-of-scope utterances (`unlabelled=oos_train`: CLINC150's oos_train), for
    objectives that push out-of-scope text away (objective=outlier)."""
    check_int("unlabelled.max_examples", max_examples, 1, null="all")
    pool = run_data.oos.get("train")
    if pool is None or not len(pool):
        raise ConfigError(f"unlabelled=oos_train reads the run's training out-of-scope utterances, but data "
                          f"{run_data.name!r} has none (data=clinc_oos has oos_train; a table's data.oos_label rows "
                          f"are split between validation and test).")
    examples = tuple(Example(e.text, LABEL, e.tokens, e.head, e.tail, e.text_pair) for e in pool.examples)
    examples = examples[:max_examples] if max_examples else examples
    log.info("unlabelled: %d out-of-scope training sentences of %s", len(examples), run_data.name)
    return UnlabelledText(examples, f"{run_data.name} training out-of-scope pool", bool(allow_eval_text))


def eval_texts(splits: Sequence[DataSplits | None]) -> set[str]:
    """Every validation and test sentence of the given data (the run's, and its test target's)."""
    return {e.text for d in splits if d is not None for part in (d.val, d.test) for e in part.examples}
