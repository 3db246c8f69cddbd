"""Per-episode test records: `episodes/<setting>.jsonl` in a run folder, one strict JSON line per test
episode, written atomically when the run (or metarun-eval) has tested:

    {"episode": 0, "classes": ["card_lost", ...], "query": [12, 40, ...],
     "gold": [0, 0, 1, ...], "pred": [0, 2, 1, ...], "conf": [0.91, 0.48, ...]}

`classes`: the episode's classes in label order (label N, one past the last, is none-of-the-above);
`query`: each query's index in the evaluated class set (the test classes, after `max_per_class`);
`gold` / `pred`: labels; `conf`: the softmax probability of the predicted label (4 decimals). Episode
i of a setting depends only on `eval.seed` and i, so two runs tested with the same protocol on the
same classes have the same `classes`, `query` and `gold` lines: `metarun-compare` pairs them.
About 0.5 KB per 5-way 5-query episode: 600 episodes take about 300 KB. Out-of-scope settings add `oos`,
each query's rejection score (evaluate/out_of_scope.py).

Beside them, `<setting>.mistakes.json` (evaluators on cached features): the first 20 misclassified
queries, each with its text, gold and predicted class, confidence, and the support example nearest to
it (cosine similarity of the features), its class and the similarity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from metarun.files import atomic_write, strict, write_json

FOLDER = "episodes"
NOTA = "none-of-the-above"  # the name label N (one past the episode's classes) is shown and written under


def file_name(setting: str) -> str:
    """`test/5way_1shot` -> `test_5way_1shot.jsonl`."""
    return setting.replace("/", "_") + ".jsonl"


def write(run_dir: str | Path, scores) -> None:
    """The records of a test's Scores (`Scores.records`: {setting: [episode records]}, built by
    evaluate/common.py:episode_record) -> one file per setting under `run_dir/episodes/`, and its
    mistakes beside them."""
    for setting, lines in scores.records.items():
        text = "".join(json.dumps(strict(r), separators=(",", ":"), allow_nan=False) + "\n" for r in lines)
        atomic_write(Path(run_dir) / FOLDER / file_name(setting), lambda f, t=text: f.write(t.encode()))
    for setting, examples in scores.mistakes.items():
        write_json(Path(run_dir) / FOLDER / mistakes_name(setting), examples)


def mistakes_name(setting: str) -> str:
    """`test/5way_1shot` -> `test_5way_1shot.mistakes.json`: the first misclassified queries of the setting
    with their nearest support example (evaluators on cached features)."""
    return setting.replace("/", "_") + ".mistakes.json"


def read_mistakes(run_dir: str | Path, setting: str) -> list[dict]:
    path = Path(run_dir) / FOLDER / mistakes_name(setting)
    return json.loads(path.read_text()) if path.is_file() else []


def read(run_dir: str | Path) -> dict[str, list[dict]]:
    """The run's records by setting (`test/5way_1shot`); {} for a run made before records existed."""
    folder = Path(run_dir) / FOLDER
    out = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        setting = path.stem.replace("_", "/", 1)
        out[setting] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def accuracies(lines: list[dict]) -> np.ndarray:
    """Per-episode accuracy in percent."""
    return np.array([100.0 * np.mean(np.asarray(r["gold"]) == np.asarray(r["pred"])) for r in lines])


def fingerprint(lines: list[dict]) -> str:
    """A digest of what was asked (classes, queries, gold labels of every episode), not what was
    answered: equal for runs tested on the same episodes."""
    h = hashlib.blake2b(digest_size=10)
    for r in lines:
        h.update(json.dumps([r["episode"], r["classes"], r["query"], r["gold"]]).encode())
    return h.hexdigest()
