"""End-to-end runs for transfer: the unit tests are in tests/unit/test_transfer.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarun.errors import ConfigError
from conftest import FAST, read_json, run_in_process


def test_finetune_cli_end_to_end(tmp_path):
    run_in_process([*FAST, "learner=finetune"], tmp_path / "run")
    out = read_json(tmp_path / "run" / "results.json")
    assert out["learner"] == "finetune" and out["steps"] == 6
    assert set(out["results"]) == {"test/5way_1shot", "test/5way_5shot", "val/5way_5shot"}


def test_per_class_protocol_cli_writes_every_draw(tmp_path):
    run_in_process(["encoder=tiny", "experiment=mteb_banking77", "encoder.max_length=32", "eval.test.draws=3",
                    "trainer.progress=false", "logger=jsonl"], tmp_path / "run")
    scores = read_json(tmp_path / "run" / "results.json")["results"]["test/banking77_8per_class"]
    assert scores["draws"] == 3 and len(scores["per_draw"]) == 3
    assert scores["acc"] == pytest.approx(np.mean(scores["per_draw"]), abs=0.01)
    assert 1.3 < scores["acc"] < 100  # 77 classes: chance is 1.3%


def test_cross_dataset_episodes_use_target_classes(tmp_path):
    """Cross dataset episodes come from the target test classes."""
    from metarun.config import build
    from metarun.evaluate import build_evaluator
    from conftest import compose_cfg

    cfg = compose_cfg(["data=clinc150", "+data@eval.test.data=banking77"])
    ev = build_evaluator(cfg.eval, "test", build(cfg.data, "data"), progress=False)
    banking = build(compose_cfg(["data=banking77"]).data, "data")
    assert ev.data.classes == banking.test.classes
    run_in_process([*FAST, "data=clinc150", "+data@eval.test.data=banking77"], tmp_path / "run")
    out = read_json(tmp_path / "run" / "results.json")
    assert (out["data"], out["test_data"]) == ("clinc150", "banking77")


def test_distill_run_saves_a_smaller_student_only(tmp_path):
    """Distill cli student is smaller and checkpoints leave the teacher out."""
    teacher = tmp_path / "teacher"
    run_in_process([*FAST, "learner=finetune"], teacher)
    student = tmp_path / "student"
    run_in_process([*FAST, "learner=distill", f"learner.teacher={teacher}", "learner.student_layers=[1]"], student)
    report = read_json(student / "results.json")["report"]
    assert report["student_layers"] == 1 and report["student_params"] < report["teacher_params"]
    assert report["student_sentences_per_s"] > 0 and "test/5way_1shot" in report["teacher_results"]
    saved = torch.load(student / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith("teacher") for k in saved) and any(k.startswith("encoder.") for k in saved)
    teacher_layer = torch.load(teacher / "checkpoints" / "best.pt", weights_only=True)["model"]
    key = next(k for k in saved if ".layer.0.attention.self.query.weight" in k)
    assert not torch.equal(saved[key], teacher_layer[key.replace("layer.0", "layer.1")])  # the student's layer trained
    with pytest.raises(ConfigError, match="learner.teacher="):
        run_in_process([*FAST, "learner=distill"], tmp_path / "none")
