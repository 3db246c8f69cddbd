"""End-to-end runs for multitask: the unit tests are in tests/unit/test_multitask.py."""

from __future__ import annotations


from conftest import FAST, read_json, run_in_process


def test_multitask_cli_end_to_end(tmp_path):
    run_in_process(
        [*FAST, "experiment=multitask_intents", "learner.weighting=uw", "sampler.batch_size=4"], tmp_path / "run"
    )
    out = read_json(tmp_path / "run" / "results.json")
    assert out["learner"] == "multitask" and out["data"] == "intents3" and out["test_data"] == "intents3"
    assert {"test/task_banking77", "test/task_clinc150", "test/task_hwu64", "test/5way_1shot"} <= set(out["results"])
    import json

    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in steps if "train/loss" in row]  # (step 0 is the untrained model's validation)
    assert all(f"train/loss_{t}" in steps[0] for t in ("banking77", "clinc150", "hwu64"))  # learner metrics logged
