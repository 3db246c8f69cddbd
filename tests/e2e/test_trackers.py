"""Experiment trackers (MLflow file store, W&B offline) and TensorBoard's HParams row, each read back
through the library's own API or files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import FAST, read_json, run_cli, run_in_process
from metarun.errors import ConfigError
from metarun.tracking.writers.metrics import read_metrics
from metarun.tracking.folder.run_dir import config_diff

mlflow = pytest.importorskip("mlflow")
ARGS = [a for a in FAST if not a.startswith("logger=")]


def mlflow_client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.as_uri())


def val_history(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val/5way_5shot/acc"] for r in read_metrics(run_dir / "metrics.jsonl")
            if r.get("val/5way_5shot/acc") is not None}


def test_mlflow_records_config_metrics_and_artifacts(tmp_path, monkeypatch):
    """Mlflow file store run records config metrics results and artifacts."""
    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns where metarun starts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = run_in_process([*ARGS, "logger=[jsonl,mlflow]"], tmp_path / "run")
    client = mlflow_client(tmp_path / "mlruns")
    experiment = client.get_experiment_by_name("metarun")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert read_json(tmp_path / "run" / "trackers.json")["mlflow"] == run.info.run_id
    params = run.data.params
    assert params["learner.name"] == "protonet" and params["encoder.name"] == "tiny" and params["seed"] == "0"
    assert params["trainer.max_steps"] == "6"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/5way_5shot/acc")}
    assert history == pytest.approx(val_history(tmp_path / "run"))
    for key, score in results["results"].items():
        assert run.data.metrics[f"{key}/acc"] == pytest.approx(score["acc"])
    assert run.data.metrics["wall_time_s"] == pytest.approx(results["wall_time_s"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "curves.png", ".hydra"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["results"] == results["results"]


def test_a_continued_run_logs_into_the_same_mlflow_run(tmp_path):
    store = tmp_path / "mlruns"
    args = [*ARGS, "logger=[jsonl,mlflow]", f"logger.mlflow.tracking_uri={store.as_uri()}"]
    run_in_process([*args, "trainer.max_steps=3"], tmp_path / "run")
    first = read_json(tmp_path / "run" / "trackers.json")["mlflow"]
    run_in_process([*args, "trainer.max_steps=6"], tmp_path / "run")  # continues the 3-step run
    client = mlflow_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("metarun").experiment_id])
    assert run.info.run_id == first and run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(first, "val/5way_5shot/acc")}
    assert {3, 6} <= steps


def test_logger_settings_do_not_stop_a_resume():
    saved = {"seed": 0, "logger": {"jsonl": True, "tensorboard": True}}
    assert config_diff(saved, {"seed": 0, "logger": {"jsonl": True, "mlflow": {"experiment": "x"}}}) == {}
    assert config_diff(saved, {"seed": 1, "logger": saved["logger"]}) == {"seed": (0, 1)}


def test_a_missing_tracker_package_names_its_extra(tmp_path, monkeypatch):
    """A missing tracker package names the extra before the folder is touched."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[wandb\]"'):
        run_in_process([*ARGS, "logger=[jsonl,wandb]"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sweep_jobs_are_children_of_one_mlflow_parent_run(tmp_path):
    store = tmp_path / "mlruns"
    sweep = tmp_path / "sweep"
    out = run_cli(["-m", *ARGS, "seed=0,1", "logger=[jsonl,mlflow]", f"logger.mlflow.tracking_uri={store.as_uri()}",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    client = mlflow_client(store)
    runs = client.search_runs([client.get_experiment_by_name("metarun").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["metarun.sweep_dir"] == str(sweep.resolve())
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    jobs = {p.parent.name for p in sweep.glob("*/results.json")}
    assert len(jobs) == 2 and {r.info.run_name for r in children} == jobs
    assert parents[0].info.status == "FINISHED"


# -- Weights & Biases, offline ----------------------------------------------------------------------

def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte header (":W&B", magic,
    version), then LevelDB-log blocks of 32 KiB whose records (crc32, length, type) carry W&B's
    protobuf `Record`s, split across blocks as FIRST / MIDDLE / LAST pieces."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left_in_block = 32768 - pos % 32768
        if left_in_block < 7:  # a block's tail too short for a header is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        piece = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        pending += piece
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_records_config_and_metrics(tmp_path, monkeypatch):
    """Wandb offline run records config metrics results and files."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run_in_process([*ARGS, "logger=[jsonl,wandb]"], tmp_path / "run")
    (log_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    run_id = read_json(tmp_path / "run" / "trackers.json")["wandb"]
    assert log_file.name == f"run-{run_id}.wandb"
    records = wandb_records(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["learner"]["name"] == "protonet" and config["seed"] == 0
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            if "val/5way_5shot/acc" in row:
                history[row["_step"]] = row["val/5way_5shot/acc"]
    assert history == pytest.approx(val_history(tmp_path / "run"))
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update}
    for key, score in results["results"].items():
        assert summary[f"{key}/acc"] == pytest.approx(score["acc"])
    assert "exit" in kinds  # finished
    files = log_file.parent / "files"
    assert json.loads((files / "results.json").read_text())["results"] == results["results"]


# -- TensorBoard HParams -----------------------------------------------------------------------------

def test_each_run_writes_its_hparams_row(tmp_path):
    """Each run writes its hparams row with final test accuracies."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    args = [*ARGS, "logger=default", "sampler.k_shot=2", "learner=matching"]
    results = run_in_process(args, tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.ListFields()[0][1] for k, v in start.hparams.items()}
    assert hparams["learner"] == "matching" and hparams["sampler.k_shot"] == 2 and hparams["seed"] == 0
    assert hparams["data"] == results["data"] and hparams["encoder"] == "tiny"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    tags = {m.name.tag for m in experiment.metric_infos}
    assert tags == {f"{k}/acc" for k in results["results"] if k.startswith("test/")}
    for tag in tags:  # the row's values are the run's own final scalars
        assert acc.Scalars(tag)[-1].value == pytest.approx(results["results"][tag[: -len("/acc")]]["acc"])


def test_the_hparams_row_can_be_switched_off(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_in_process([*ARGS, "logger=default", "logger.hparams=false"], tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert "hparams" not in acc.Tags().get("plugins", []) or not acc.PluginTagToContent("hparams")


@pytest.mark.parametrize("uri", ["bogus://nowhere/x", "file:///proc/metarun_cannot_write_here"])
def test_a_tracker_that_cannot_start_warns_once(tmp_path, caplog, uri):
    """A tracker that cannot start is one warning and the run goes on."""
    import logging

    plain = run_in_process(ARGS, tmp_path / "plain")
    with caplog.at_level(logging.WARNING, "metarun"):
        results = run_in_process([*ARGS, "logger=[jsonl,mlflow]", f"logger.mlflow.tracking_uri={uri}"],
                                 tmp_path / "run")
    assert results["results"] == plain["results"] and (tmp_path / "run" / "DONE").is_file()
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mlflow:")]
    assert len(warned) == 1 and "could not start its run" in warned[0] and "logger.mlflow" in warned[0]
