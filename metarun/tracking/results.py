"""Finished runs as records: loading results.json files with their saved configs, the labels a run
gets in tables and plots, and how runs in one cell are aggregated (shared by table.py and plots.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

BUILTIN = ("learner", "data", "test_data", "encoder", "seed")


def load_runs(paths: Sequence[str | Path]) -> list[dict]:
    """Every results.json under `paths` (files or folders), with its run's saved config."""
    runs = []
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        for file in files:
            record = json.loads(file.read_text())
            saved = file.parent / ".hydra" / "config.yaml"
            record["config"] = OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else {}
            record["folder"] = str(file.parent)
            runs.append(record)
    return runs


def _lookup(run: dict, key: str, setting: str):
    if key == "setting":
        return setting
    if key in BUILTIN and key in run:
        return run[key]
    node = run["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def labels(run: dict, keys: Sequence[str], setting: str) -> tuple[str, ...]:
    """The values of `keys` for one run and setting: a table row or column label, or a plot line."""
    return tuple(str(_lookup(run, k, setting)) for k in keys)


def aggregate(scores: list[dict], how: str) -> tuple[float, float | None, int]:
    """-> (mean, half-width or std, number of runs); no half-width (None) when a run has none."""
    means = [s["acc"] for s in scores]
    mean = sum(means) / len(means)
    if len(scores) == 1:
        return mean, scores[0]["ci95"], 1
    if how == "std":
        return mean, math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1)), len(means)
    if any(s["ci95"] is None for s in scores):  # a run of one episode has no interval, so neither has the pool
        return mean, None, len(scores)
    se = math.sqrt(sum((s["ci95"] / 1.96) ** 2 for s in scores)) / len(scores)
    return mean, 1.96 * se, len(scores)


