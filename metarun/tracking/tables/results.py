"""Runs as records: the results.json a run writes (`results_record`, `format_results`); loading
results.json files with their saved configs, the labels a run gets in tables and plots, and how runs
in one cell are aggregated (shared by table.py and plots.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from metarun.errors import ConfigError

BUILTIN = ("regime", "learner", "data", "test_data", "encoder", "seed")


def regime_label(uses_class_names: bool, reads_test_unlabelled: bool) -> str:
    """The information regime of a result, as tables print it: whether the learner read class names
    (in training or at test time), and whether it read unlabelled test-class utterances (the
    episode's queries, transductively)."""
    return f"{'names' if uses_class_names else 'no names'}, {'transductive' if reads_test_unlabelled else 'inductive'}"


def results_record(cfg, learner, data, test, train_inputs: str, state, scores: dict, report: dict | None,
                   wall_time_s: float, run_dir: Path, unlabelled=None) -> dict:
    """results.json of a run: what ran (`cfg`, the Learner, the DataSplits `data`, the first test
    evaluator `test`, the UnlabelledText its objectives read), its information regime, its TrainState
    `state`, every score, the learner's report."""
    names = bool(learner.uses_class_names)  # declared by its objectives and refiners
    # the protocol's query refiner reads the test queries; an unlabelled stream may keep test sentences
    test_unlabelled = test.refiner is not None or bool(unlabelled is not None and unlabelled.allow_eval_text)
    return {
        "learner": learner.name,
        "data": data.name,
        "test_data": (cfg.eval.test.get("data") or {}).get("name", data.name),
        **data_split(cfg.data),
        "encoder": cfg.encoder.name,
        "seed": cfg.seed,
        "uses_class_names": names,
        "reads_test_unlabelled": test_unlabelled,
        "regime": regime_label(names, test_unlabelled),
        "results": scores,
        "best_step": state.best_step,
        "steps": state.step,
        "train_inputs": train_inputs,
        **({"unlabelled": unlabelled.record()} if unlabelled is not None else {}),
        **({"report": report} if report else {}),
        **({"test_classes": test_classes} if (test_classes := named_test_classes(data, test)) else {}),
        "wall_time_s": round(wall_time_s, 1),
        "run_dir": str(run_dir),
    }


def data_split(node) -> dict:
    """Which class split of the data a run used: `split` (a number, with the class-split file it
    indexes) or the classes listed in the config, so that two splits of one file are told apart."""
    out = {}
    if node.get("split_file") is not None or node.get("classes") is None and node.get("split") is not None:
        out["split"] = node.get("split")
        if node.get("split_file") is not None:
            out["split_file"] = str(node.get("split_file"))
    elif node.get("classes") is not None:
        out["split"] = "classes listed in data.classes"
    return out


def named_test_classes(data, test) -> dict[str, str] | None:
    """The classes the test episodes came from (another dataset's in a cross-domain run), with their
    readable names where the data has them (FewRel relations; else the id). None for a protocol
    without classes of its own."""
    classes = list(getattr(test, "classes", []) or [])
    if not classes:
        return None
    names = test.class_names or (data.class_names if set(classes) <= set(data.test.classes) else {})
    return {k: names.get(k, k) for k in classes}


def format_results(scores: dict) -> str:
    def unit(v: dict) -> str:
        if "examples" in v:
            return f"{v['examples']} held-out examples"
        return f"{v['episodes']} episodes" if "episodes" in v else f"{v['draws']} draws"

    def ci(v: dict) -> str:
        return "n/a" if v["ci95"] is None else f"{v['ci95']:.2f}"

    return "\n".join(f"  {k:<28} {v['acc']:6.2f} ± {ci(v)}  ({unit(v)})" for k, v in scores.items())


def load_runs(paths: Sequence[str | Path]) -> list[dict]:
    """Every results.json under `paths` (files or folders), with its run's saved config."""
    from metarun.tracking.folder.run_dir import renamed

    runs = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix != ".json":
            raise ConfigError(f"{path} is a file, not a run folder, a sweep folder or a results.json: give the folder "
                              f"that holds it.")
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        for file in files:
            try:
                record = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{file} is not a results file metarun wrote (not valid JSON: {e}).") from None
            if not isinstance(record, dict) or not isinstance(record.get("results"), dict):
                raise ConfigError(f"{file} is not a results file metarun wrote (it has no \"results\" object).")
            saved = file.parent / ".hydra" / "config.yaml"
            # in today's spelling, so old and new runs of one experiment share a cell
            try:
                record["config"] = renamed(OmegaConf.to_container(OmegaConf.load(saved))) if saved.is_file() else {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{saved} is not valid YAML ({str(e).splitlines()[0]}): the run's saved config is "
                                  f"damaged.") from None
            record["folder"] = str(file.parent)
            runs.append(record)
    return runs


def run_regime(run: dict) -> str:
    """A loaded run's regime: from its results.json, or for a run written before results.json recorded
    it, from its saved config (class names: `learner.label_prior`, today `refiner.name_prior`; test
    utterances: `eval.test.transductive_steps` / `rectify`)."""
    if "regime" in run:
        return run["regime"]
    from metarun.tracking.folder.run_dir import renamed

    config = renamed(run["config"]) if run["config"] else {}
    test = (config.get("eval") or {}).get("test") or {}
    names = "name_prior" in (config.get("refiner") or {}) or "names" in (config.get("objective") or {})
    return regime_label(names, bool(test.get("transductive_steps") or test.get("rectify")))


def _lookup(run: dict, key: str, setting: str):
    if key == "setting":
        return setting
    if key == "regime":
        return run_regime(run)
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


