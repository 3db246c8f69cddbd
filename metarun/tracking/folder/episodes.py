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
import math
from pathlib import Path

import numpy as np

from metarun.errors import MetarunError
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


class RecordError(MetarunError, ValueError):
    """A per-episode record that is not what a run writes (a damaged or edited file)."""


def read(run_dir: str | Path) -> dict[str, list[dict]]:
    """The run's records by setting (`test/5way_1shot`), each checked (`check_record`); {} for a run
    made before records existed. A damaged file is a RecordError naming the file and the line."""
    folder = Path(run_dir) / FOLDER
    out = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        setting = path.stem.replace("_", "/", 1)
        lines = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}, line {number}: not a JSON record ({e.msg}; a truncated or edited file?). "
                                  f"Test the run again with `metarun-eval {run_dir}`.") from None
            problem = check_record(record)
            if problem:
                raise RecordError(f"{path}, line {number}: {problem}; the file is damaged or was edited. Test the run "
                                  f"again with `metarun-eval {run_dir}`.")
            lines.append(record)
        out[setting] = lines
    return out


def _ints(x, low: int, high: int) -> bool:
    return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in x)


def check_record(r: object) -> str | None:
    """What is wrong with one episode record, or None: `classes` a list of names, `query`, `gold` and
    `pred` lists of whole numbers of one length (labels 0..N, N: none-of-the-above / out-of-scope),
    `conf` (and `oos`, if present) probabilities of that length."""
    if not isinstance(r, dict) or not {"episode", "classes", "query", "gold", "pred", "conf"} <= set(r):
        return "a record needs episode, classes, query, gold, pred and conf"
    if not isinstance(r["classes"], list) or not all(isinstance(c, str) for c in r["classes"]):
        return f"classes must be a list of class names, got {r['classes']!r:.60}"
    n, m = len(r["classes"]), len(r["gold"]) if isinstance(r["gold"], list) else -1
    if not isinstance(r["episode"], int) or not _ints(r["query"], 0, 2**62) or len(r["query"]) != m:
        return "episode must be a whole number and query a list of example indices, one per gold label"
    for key in ("gold", "pred"):
        if not _ints(r[key], 0, n) or len(r[key]) != m:
            return f"{key} must be {m} labels from 0 to {n}, got {r[key]!r:.60}"
    for key in ("conf", "oos"):
        values = r.get(key, [0.0] * m)
        if not isinstance(values, list) or len(values) != m or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return f"{key} must be {m} finite numbers, got {values!r:.60}"
    if not all(0 <= v <= 1 for v in r["conf"]):
        return "conf must hold probabilities in [0, 1]"
    return None


def check_against_results(run_dir: str | Path, records: dict[str, list[dict]], scores: dict) -> None:
    """Refuse records whose accuracy is not the one results.json reports for their setting (a record
    edited after the run: a comparison would show one number beside the run's table showing another)."""
    for setting, lines in records.items():
        reported = (scores.get(setting) or {}).get("acc")
        if reported is None or not lines:
            continue
        mean = float(accuracies(lines).mean())
        if abs(mean - reported) > 0.006:  # results.json rounds to 2 decimals
            raise RecordError(f"{Path(run_dir) / FOLDER / file_name(setting)}: its episodes' accuracy is {mean:.2f}, "
                              f"results.json says {reported:.2f} for {setting}: the records were changed after the "
                              f"run. Test the run again with `metarun-eval {run_dir}`.")


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
