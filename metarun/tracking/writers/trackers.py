"""Experiment trackers beside metrics.jsonl: MLflow (`logger=mlflow`) and Weights & Biases
(`logger=wandb`), each an optional dependency, plus TensorBoard's HParams table.

A tracker receives what the run folder receives: the resolved config as parameters, every line of
metrics.jsonl as it is written, and at the end the final results and the run's files (results.json,
curves.png, the saved config) as artifacts. Runs of one sweep are grouped: an MLflow parent run per
sweep folder, a W&B group named after it. A tracker never costs a run its results: a failure at the
end is a warning. The tracker's run id is kept in the run folder (`trackers.json`), so a resumed run
logs into the same tracker run (lines logged after the last checkpoint and logged again on resume
appear twice in the tracker's history; metrics.jsonl holds them once).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from metarun.errors import ConfigError
from metarun.files import write_json
from metarun.tracking.folder.run_dir import flatten

log = logging.getLogger("metarun")

IDS = "trackers.json"  # {"mlflow": run id, "wandb": run id} in the run folder
EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}  # tracker -> (module, pip extra)
ARTIFACTS = ("results.json", "curves.png", ".hydra/config.yaml", ".hydra/overrides.yaml")


def flat_config(config: dict) -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: parameters as trackers show them (the run folder's dotted keys,
    values other than strings as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten(config).items()}


def final_metrics(results: dict) -> dict[str, float]:
    """results.json -> {"test/5way_1shot/acc": ..., "test/5way_1shot/ci95": ..., "wall_time_s": ...}."""
    out = {f"{k}/{m}": v[m] for k, v in results["results"].items() for m in ("acc", "ci95") if v.get(m) is not None}
    return out | {k: results[k] for k in ("best_step", "steps", "wall_time_s") if k in results}


class Tracker:
    """One external tracker for one run."""

    name = ""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, results: dict, run_dir: Path) -> None:
        raise NotImplementedError

    def fail(self) -> None:
        raise NotImplementedError


def check_available(logger: dict) -> None:
    """Refuse, before the run folder is touched, a tracker whose package is not installed."""
    for key, (module, extra) in EXTRAS.items():
        if logger.get(key) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logger={key} needs the {module} package, which is not installed; run "
                f'`pip install -e ".[{extra}]"` (or `pip install {module}`), or drop {key} from logger.'
            )


def build_trackers(logger: dict, config: dict, run_dir: Path, sweep_dir: Path | None) -> list[Tracker]:
    """The trackers `logger` switches on, started (or resumed) for the run in `run_dir`."""
    check_available(logger)
    ids_file = run_dir / IDS
    ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
    trackers: list[Tracker] = []
    try:
        for name, cls in (("mlflow", MLflowTracker), ("wandb", WandbTracker)):
            if logger.get(name):
                try:
                    trackers.append(cls(logger[name], config, run_dir, sweep_dir, ids.get(name)))
                except Exception as e:  # a tracker never stops the run: metrics.jsonl has every line
                    log.warning(
                        "%s: could not start its run (%s: %s); the run goes on without it (metrics.jsonl "
                        "and results.json have everything). Check logger.%s's settings.",
                        name,
                        type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "",
                        name,
                    )
    except BaseException:
        for tracker in trackers:
            with contextlib.suppress(Exception):
                tracker.fail()
        raise
    new_ids = {t.name: t.run_id for t in trackers}
    if new_ids and new_ids != ids:
        write_json(ids_file, ids | new_ids)
    return trackers


def close_trackers(trackers: list[Tracker], close) -> None:
    """`close(tracker)` (finish, or mark failed) for each tracker; a tracker's error is a warning, never
    the run's."""
    for tracker in trackers:
        try:
            close(tracker)
        except Exception as e:
            log.warning(
                "%s: could not close its run (%s: %s); the run folder is complete", tracker.name, type(e).__name__, e
            )


def job_name(run_dir: Path, sweep_dir: Path | None) -> str:
    return run_dir.name if sweep_dir is not None else str(run_dir)


# -- MLflow ------------------------------------------------------------------------------------------


class MLflowTracker(Tracker):
    """Through `MlflowClient` (no global active run, so sweep jobs in one process do not mix). The
    default tracking URI is $MLFLOW_TRACKING_URI, else a file store `mlruns/` in the folder metarun was
    started from. MLflow 3 keeps its file store in maintenance mode and refuses it unless
    MLFLOW_ALLOW_FILE_STORE is set; for a file-store URI metarun sets it (for this process only)."""

    name = "mlflow"

    def __init__(self, cfg: dict, config: dict, run_dir: Path, sweep_dir: Path | None, run_id: str | None):
        uri = cfg.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client, self.artifacts, self.uri = MlflowClient(tracking_uri=uri), cfg.get("artifacts", True), uri
        experiment = self.client.get_experiment_by_name(cfg["experiment"])
        eid = experiment.experiment_id if experiment else self.client.create_experiment(cfg["experiment"])
        self.parent = self._parent(eid, sweep_dir) if sweep_dir is not None else None
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {"mlflow.runName": job_name(run_dir, sweep_dir), "metarun.run_dir": str(run_dir)}
            if self.parent is not None:
                tags["mlflow.parentRunId"] = self.parent
            run_id = self.client.create_run(eid, tags=tags).info.run_id
            self._log_params(run_id, flat_config(config))
        self.run_id = run_id
        log.info("mlflow: run %s in experiment %r at %s", run_id, cfg["experiment"], uri)

    def _parent(self, eid: str, sweep_dir: Path) -> str:
        """The sweep's parent run: one per sweep folder, shared by every job (under a file lock in the
        sweep folder, as jobs of a parallel launcher start at once). It is RUNNING while a job runs and
        FINISHED when the last one to end has ended."""
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / ".mlflow_parent.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.client.search_runs([eid], f"tags.`metarun.sweep_dir` = '{sweep_dir}'", max_results=1)
            if found:
                self.client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
            return self.client.create_run(
                eid, tags={"mlflow.runName": sweep_dir.name, "metarun.sweep_dir": str(sweep_dir)}
            ).info.run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, results: dict, run_dir: Path) -> None:
        self.log_metrics(results.get("steps", 0), final_metrics(results))
        if self.artifacts:
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    folder = str(Path(name).parent)
                    self.client.log_artifact(self.run_id, str(run_dir / name), None if folder == "." else folder)
        self._end("FINISHED")

    def fail(self) -> None:
        self._end("FAILED")

    def _end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
        if self.parent is not None:
            self.client.set_terminated(self.parent, "FINISHED")


# -- Weights & Biases ----------------------------------------------------------------------------------


class WandbTracker(Tracker):
    """`wandb.init` with the mode $WANDB_MODE, else `logger.wandb.mode`, else offline (so a run never
    uploads unless asked to); the wandb/ folder goes into the run folder unless `logger.wandb.dir`."""

    name = "wandb"

    def __init__(self, cfg: dict, config: dict, run_dir: Path, sweep_dir: Path | None, run_id: str | None):
        import wandb

        mode = os.environ.get("WANDB_MODE") or cfg.get("mode") or "offline"
        folder = Path(cfg.get("dir") or run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.artifacts = cfg.get("artifacts", True)
        self.run = wandb.init(
            project=cfg["project"],
            entity=cfg.get("entity"),
            dir=str(folder),
            mode=mode,
            config=config,
            name=job_name(run_dir, sweep_dir),
            id=run_id or uuid.uuid4().hex[:8],
            resume="allow",
            group=str(sweep_dir) if sweep_dir is not None else None,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run_id = self.run.id
        log.info("wandb: run %s (%s) in project %r, files in %s", self.run_id, mode, cfg["project"], folder / "wandb")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, results: dict, run_dir: Path) -> None:
        self.run.summary.update(final_metrics(results))
        if self.artifacts:  # files in the W&B run's files folder are uploaded with it (now, or at `wandb sync`)
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    (Path(self.run.dir) / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(run_dir / name, Path(self.run.dir) / name)
        self.run.finish()

    def fail(self) -> None:
        self.run.finish(exit_code=1)


# -- TensorBoard HParams -----------------------------------------------------------------------------


def hparams_of(config: dict, overrides: list[str]) -> dict[str, object]:
    """The run's table row keys: learner, data, encoder, seed, and every key its command line set
    (`sampler.k_shot=5` -> the resolved value; `learner=maml` -> the chosen config's name)."""
    flat = flat_config(config)
    row: dict[str, object] = {
        "learner": config["learner"]["name"],
        "data": config["data"]["name"],
        "encoder": config["encoder"]["name"],
        "seed": config["seed"],
    }
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.startswith("hydra.") or not value:
            continue
        if key in config and isinstance(config[key], dict):  # a config group choice
            row[key] = config[key].get("name", value)
        else:
            row[key] = flat.get(key, value)
    return {k: _hparam_value(v) for k, v in row.items()}


def _hparam_value(v: object) -> object:
    """HParams takes numbers, strings and booleans: JSON strings of numbers become numbers."""
    if isinstance(v, (bool, int, float)):
        return v
    with contextlib.suppress(ValueError, TypeError):
        parsed = json.loads(v)
        if isinstance(parsed, (bool, int, float)):
            return parsed
    return str(v)


def write_hparams(tensorboard, hparams: dict, metric_tags: list[str]) -> None:
    """The HParams plugin's experiment, session-start and session-end summaries in the run's own event
    files: the session's metric values are the run's scalars of `metric_tags` (test accuracies)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    exp, ssi, sei = hparams_summary(hparams, {tag: 0.0 for tag in metric_tags})
    for summary in (exp, ssi, sei):
        tensorboard.file_writer.add_summary(summary)
    tensorboard.flush()
