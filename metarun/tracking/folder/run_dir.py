"""A run folder as a unit of work: one process at a time, and nothing in it changes until the new
run is known to be allowed there.

What a folder may hold, and what a new run with config C may do with it:
- nothing of a run (a new folder, or one with only logs): start;
- a run of C (the same config, `.hydra/config.yaml`, up to the keys in IGNORED): resume from its last
  checkpoint, or, when it finished (DONE), skip it (`skip_done`, the CLI) or test it again;
- a run of C with a smaller `trainer.max_steps`: continue it to the new step count (its results so
  far are kept as `results.steps<N>.json`);
- anything else (another config; a checkpoint or results without a saved config): refused, naming
  the keys that differ. Nothing is deleted, overwritten or relabelled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from enum import Enum
from pathlib import Path

import yaml

from metarun.errors import RunDirError
from metarun.files import atomic_write, write_json
from metarun.tracking.tables.plots import plot_run
from metarun.tracking.tables.results import format_results

log = logging.getLogger("metarun")

DONE, FAILED, RESULTS, CONFIG = "DONE", "FAILED", "results.json", ".hydra/config.yaml"


class Claim(str, Enum):
    """What `RunDir.claim` allows a run of a config to do in a folder."""

    NEW = "new"  # start
    RESUME = "resume"  # the same config: from its last checkpoint (or test a finished run again)
    CONTINUE = "continue"  # a larger trainer.max_steps: train the finished steps on to the new count

    def describe(self) -> str:
        return {"new": "new run", "resume": "resuming", "continue": "continuing to more steps"}[self.value]

LAST = "checkpoints/last.pt"
# Keys that cannot change what a run computes: a relaunch may differ in them.
IGNORED = ("skip_done", "retries", "token_cache", "trainer.progress", "trainer.num_workers", "trainer.keep_optimizer",
           "trainer.validate_at_start", "trainer.threads", "trainer.debug_kill_at_step",
           "trainer.debug_kill_during_save")
# where results are mirrored (trackers, TensorBoard) and whether features come from disk are not what a run computes
# (and the test suite's kill hook, tests/kill_callback.py, is how a test kills a run it then resumes)
IGNORED_PREFIXES = ("logger.", "feature_cache.", "callbacks.kill.")
CONTINUABLE = ("trainer.max_steps",)  # a larger value continues a run of the smaller one
# Keys added after runs were made, with the value that reproduces what those runs did: a saved config
# without the key counts as having this value, so older run folders still resume and are still skipped.
ADDED_LATER = {"data.dedupe": False, "data.encoding": "utf-8", "data.quoting": "minimal", "data.oos_label": None,
               "eval.test.oos_rate": 0, "eval.test.reject": "nota", "eval.test.threshold_episodes": 200,
               "learner.lora_rank": 4, "learner.lora_targets": ["attention.self.query", "attention.self.key",
                                                                "attention.self.value", "attention.output.dense",
                                                                "intermediate.dense", "output.dense"],
               "eval.test.rectify": False, "data.class_descriptions": None, "train_on_features": True,
               "data.test_all_classes": False, "eval.test.data.test_all_classes": False, "data.condition": "full",
               "sampler.na_source": "classes", "eval.test.oos_score": "maxprob", "eval.test.reject_target": 0.9}
# Modules that moved after runs were made: a saved `_target_` under the old path names the new one.
MOVED = {f"metarun.learners.{module}.": f"metarun.learners.{family}.{module}."
         for family, modules in {"gradient": ("maml", "lstm_meta", "hypernet"),
                                 "metric": ("protonet", "matching", "relation", "siamese", "induction", "pair"),
                                 "memory": ("snail", "mann"),
                                 "transfer": ("finetune", "multitask", "distill")}.items() for module in modules}


def renamed(config: object) -> object:
    """`config` with every `_target_` under a MOVED module path pointing at its new path, and the
    options that moved out of learners and the trainer in their new places (`respelled`)."""
    if isinstance(config, dict) and isinstance(config.get("learner"), dict):
        config = respelled(config)
    return _renamed(config)


def _renamed(config: object) -> object:
    if isinstance(config, dict):
        return {k: _new_path(v) if k == "_target_" else _renamed(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_renamed(v) for v in config]
    return config


# ProtoNet's options before objectives and refiners (issue 37): option -> (objective, its key there)
OLD_OBJECTIVES = {
    "contrastive_weight": ("supcon", "SupervisedContrastive", {"temperature": "temperature"}),
    "instance_weight": ("instance", "InstanceContrastive", {"temperature": "temperature"}),
    "name_contrastive_weight": ("names", "NameContrastive", {"temperature": "temperature",
                                                             "template": "label_template"}),
    "mlm_weight": ("mlm", "MaskedLM", {"probability": "mlm_probability"}),
    "consistency_weight": ("consistency", "Consistency", {"views": "consistency_views",
                                                          "sentences": "consistency_sentences",
                                                          "strength": "consistency_strength",
                                                          "augment": "consistency_augment"}),
}
OLD_LEARNER_KEYS = ("label_prior", "label_weight", "label_template", "temperature", "mlm_probability",
                    "consistency_views", "consistency_sentences", "consistency_strength", "consistency_augment",
                    "support_tuning_lr", "support_tuning_layers", "support_tuning_loss", *OLD_OBJECTIVES)


def respelled(config: dict) -> dict:
    """A config saved before the third redesign in today's spelling: ProtoNet's training terms as
    `objective.<name>`, its class-name prior as `refiner.name_prior`, `trainer.train_on_features` as
    the top-level `train_on_features`, `trainer.patience` as the callbacks' early stopping, the
    test-only kill hooks dropped. A config already in today's
    spelling comes back as it is. `learner.support_tuning_steps` > 0 stays, so that building the learner
    refuses it with what to do (support tuning was removed)."""
    learner, trainer = dict(config["learner"]), dict(config.get("trainer") or {})
    if not any(k in learner for k in OLD_LEARNER_KEYS) and not any(k in trainer for k in OLD_TRAINER_KEYS):
        return config
    config = dict(config)
    objectives = dict(config.get("objective") or {})
    for option, (name, cls, keys) in OLD_OBJECTIVES.items():
        if learner.get(option):
            objectives[name] = {"_target_": f"{OBJECTIVES_MODULE}.{cls}", "weight": learner[option],
                                **{new: learner[old] for new, old in keys.items() if old in learner}}
    refiners = dict(config.get("refiner") or {})
    if learner.get("label_prior", "none") not in ("none", None):
        refiners["name_prior"] = {"_target_": "metarun.learners.refiners.NamePrior",
                                  "weight": learner.get("label_weight", 1.0),
                                  "learned": learner["label_prior"] == "learned",
                                  "template": learner.get("label_template", "{name}"), "lr": 0.01}
    config["learner"] = {k: v for k, v in learner.items() if k not in OLD_LEARNER_KEYS
                         and not (k == "support_tuning_steps" and not v)}
    if objectives:
        config["objective"] = objectives
    if refiners:
        config["refiner"] = refiners
    if "train_on_features" in trainer:
        config.setdefault("train_on_features", trainer["train_on_features"])
    if "patience" in trainer:  # early stopping is a callback
        config["callbacks"] = {"best_checkpoint": {"_target_": "metarun.callbacks.BestCheckpoint"},
                               "early_stopping": {"_target_": "metarun.callbacks.EarlyStopping",
                                                  "patience": trainer["patience"]}}
    if "trainer" in config:
        config["trainer"] = {k: v for k, v in trainer.items() if k not in OLD_TRAINER_KEYS}
    return config


OLD_TRAINER_KEYS = ("train_on_features", "patience", "debug_kill_at_step", "debug_kill_during_save")
OBJECTIVES_MODULE = "metarun.learners.objectives"


def _new_path(target: object) -> object:
    if isinstance(target, str):
        for old, new in MOVED.items():
            if target.startswith(old):
                return new + target[len(old):]
    return target


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values; an empty mapping is no value (as if absent)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_diff(saved: dict, new: dict) -> dict[str, tuple]:
    """Dotted keys whose values differ (missing keys count as None, or as their ADDED_LATER value),
    IGNORED keys left out."""
    a, b = ADDED_LATER | flatten(renamed(saved)), ADDED_LATER | flatten(renamed(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if not ignored(k) and a.get(k) != b.get(k)}


def ignored(key: str) -> bool:
    return key in IGNORED or key.startswith(IGNORED_PREFIXES)


def config_digest(config: dict) -> str:
    relevant = {k: v for k, v in flatten(config).items()
                if not ignored(k) and not (k in ADDED_LATER and ADDED_LATER[k] == v)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(diff: dict[str, tuple], limit: int = 4) -> str:
    """The first `limit` differences, config choices first (`learner.name: "protonet" there,
    "matching" now` says more than the options that came with the choice)."""
    keys = sorted(diff, key=lambda k: (not k.endswith(".name"), k))
    items = [f"{k}: {_short(diff[k][0])} there, {_short(diff[k][1])} now" for k in keys[:limit]]
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(items) + more


def _short(x: object) -> str:
    s = json.dumps(x, default=str)
    return s if len(s) < 60 else s[:57] + "..."


class RunDir:
    """`path` as a run folder. `claim(config)` (under `lock()`) decides what a run of `config` may do."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- what the folder holds --------------------------------------------------------------------
    def saved_config(self) -> dict | None:
        file = self / CONFIG
        if not file.is_file():
            return None
        try:
            saved = yaml.safe_load(file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise RunDirError(f"{file} is not valid YAML ({str(e).splitlines()[0]}): the run's saved config is "
                              f"damaged. Restore it (the checkpoints hold the same config as 'config') or choose "
                              f"another folder.") from None
        return renamed(saved) if isinstance(saved, dict) else None

    def finished(self) -> bool:
        return (self / DONE).is_file() and (self / RESULTS).is_file()

    def finished_results(self, config: dict) -> dict | None:
        """results.json when the folder holds a finished run of this config, else None."""
        saved = self.saved_config()
        if saved is None or not self.finished() or config_diff(saved, config):
            return None
        try:
            return json.loads((self / RESULTS).read_text())
        except (OSError, ValueError):
            return None

    # -- one process at a time --------------------------------------------------------------------
    def lock(self) -> "RunDir":
        """Take the folder's lock (`.lock`, an flock: released when this process exits, however it
        exits), or refuse with the holder's pid. The pid is written by `hold()`, once `claim` has
        allowed the run: a refused run changes no byte of the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunDirError(
                f"another metarun process (pid {holder}) is running in {self.path}; wait for it to finish, or "
                f"give this run its own folder (hydra.run.dir=...)."
            ) from None
        self._lock_file = f
        return self

    def hold(self) -> None:
        """Record this process as the lock's holder (named to a second process that is refused)."""
        f = self._lock_file
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "RunDir":
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()

    # -- what a new run may do ----------------------------------------------------------------------
    def claim(self, config: dict) -> Claim:
        """-> NEW, RESUME (same config, a checkpoint or a finished run) or CONTINUE (a larger
        trainer.max_steps); raises RunDirError when the folder holds another run's work."""
        has_work = self.finished() or (self / LAST).is_file() or (self / RESULTS).is_file()
        saved = self.saved_config()
        if saved is None:
            if has_work:
                raise RunDirError(
                    f"{self.path} holds a run ({'results.json' if (self / RESULTS).is_file() else LAST}) but no "
                    f"{CONFIG} saying what config made it, so this run cannot know it may use the folder; nothing "
                    f"was changed. Use a new hydra.run.dir."
                )
            return Claim.NEW
        diff = config_diff(saved, config)
        if not diff:
            return Claim.RESUME if has_work else Claim.NEW
        if not has_work:
            log.warning("%s held an unfinished run of another config with no checkpoint (%s); starting afresh",
                        self.path, describe(diff))
            return Claim.NEW
        if set(diff) <= set(CONTINUABLE) and _larger(diff["trainer.max_steps"]):
            return Claim.CONTINUE
        what = "finished" if self.finished() else "resumable"
        raise RunDirError(
            f"{self.path} holds a {what} run of another config ({describe(diff)}); it was left as it is. Use a new "
            f"hydra.run.dir for this run, or rerun with the settings it was made with"
            + (" (only a larger trainer.max_steps may continue it)." if "trainer.max_steps" in diff else ".")
        )

    def prepare(self, mode: Claim, config: dict, overrides: list[str] | None = None) -> None:
        """Make the folder ready for a run of `config` that `claim` allowed: remove what no finished
        work needs (orphan temp files of killed writes, a stale FAILED, DONE of a run that goes on),
        keep a continued run's results, save the config."""
        for tmp in [*self.path.glob(".*.tmp"), *(self / "checkpoints").glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)  # we hold the lock: no live write is in flight
        (self / FAILED).unlink(missing_ok=True)
        if mode == Claim.CONTINUE and (self / RESULTS).is_file():
            steps = json.loads((self / RESULTS).read_text()).get("steps", "previous")
            os.replace(self / RESULTS, self / f"results.steps{steps}.json")
        if mode in (Claim.CONTINUE, Claim.RESUME):
            (self / DONE).unlink(missing_ok=True)  # written again when this run finishes
        if mode == Claim.NEW:
            for stale in (RESULTS, DONE):
                (self / stale).unlink(missing_ok=True)
        atomic_write(self / CONFIG, lambda f: f.write(yaml.safe_dump(config, sort_keys=False).encode()))
        if overrides is not None:
            atomic_write(self / ".hydra" / "overrides.yaml",
                         lambda f: f.write(yaml.safe_dump(list(overrides)).encode()))

    @contextlib.contextmanager
    def log_file(self, name: str = "run.log"):
        """Log records of the `metarun` logger (and Hydra's) into the folder while the run works in it."""
        handler = logging.FileHandler(self / name)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()

    def write_results(self, results: dict, config: dict) -> None:
        """The plots, then results.json, then DONE: each written only when everything before it worked,
        so a folder with DONE holds a complete run and a failed run leaves no results.json."""
        try:
            plot_run(self.path)
        except Exception as e:  # a plot is a convenience: it never costs the run its results
            log.warning("curves.png not written (%s: %s)", type(e).__name__, e)
        self.finish(results, config)
        log.info("results (%s, %.0f s):\n%s", self.path, results["wall_time_s"], format_results(results["results"]))

    def finish(self, results: dict, config: dict) -> None:
        """results.json, then DONE (with the config's digest): the folder holds a complete run."""
        write_json(self / RESULTS, results)
        stamp = f"{config_digest(config)} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        atomic_write(self / DONE, lambda f: f.write(stamp.encode()))


def _larger(change: tuple) -> bool:
    old, new = change
    return isinstance(old, int) and isinstance(new, int) and new > old


def claim_folder(folder: RunDir, config: dict, dist) -> Claim:
    """Rank 0 locks the folder and decides what this run may do there; every rank gets the verdict
    (or the refusal's message), and a refusal stops them all. `dist`: the run's process group."""
    verdict, refusal = None, None
    if dist.main:
        try:
            folder.lock()
            verdict = folder.claim(config)
            folder.hold()
        except RunDirError as e:
            folder.unlock()
            refusal = str(e)
    verdict, refusal = dist.broadcast((verdict, refusal))
    if refusal is not None:
        raise RunDirError(refusal)
    return Claim(verdict)
