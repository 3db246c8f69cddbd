"""Runs with unlabelled target text (the unit tests are in tests/unit/test_domain_adaptation.py)."""

import json

from conftest import FAST, compose_cfg, read_json, run_in_process

from metarun.config import build
from metarun.data.unlabelled import UnlabelledText


def test_the_stream_never_yields_a_validation_or_test_sentence(tmp_path, monkeypatch):
    """A file holding training, validation and test sentences of the run beside other text: every
    sentence the objectives draw is outside validation and test, and results.json says what was read."""
    data = build(compose_cfg(FAST).data, "data")
    held = [e.text for part in (data.val, data.test) for e in part.examples[:40]]
    mine = [e.text for e in data.train.examples[:40]] + [f"another domain's sentence {i}" for i in range(40)]
    path = tmp_path / "target.txt"
    path.write_text("\n".join(held + mine) + "\n")
    seen, draw = [], UnlabelledText.draw

    def recording(self, n):
        out = draw(self, n)
        seen.extend(e.text for e in out)
        return out

    monkeypatch.setattr(UnlabelledText, "draw", recording)
    results = run_in_process([*FAST, "trainer.max_steps=4", "objective=[adversarial,mlm]", "objective.mlm.source=both",
                              "unlabelled=file", f"unlabelled.path={path}"], tmp_path / "run")
    assert len(seen) == 4 * 2 * 50  # two objectives, 50 sentences each, 4 steps
    assert set(seen) <= set(mine) and not set(seen) & set(held)
    record = results["unlabelled"]
    assert record["source"] == str(path) and record["examples"] == 80 and record["eval_text_dropped"] == 80
    assert results["reads_test_unlabelled"] is False
    assert (results["split"], results["split_file"]) == (1, "banking77")  # the class split, beside the data
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if "train/adversarial_acc" in m]
    assert len(trained) == 4 and all(0 <= m["train/adversarial_acc"] <= 1 for m in trained)


def test_a_target_file_without_names_lists_its_test_classes(tmp_path):
    """Cross-domain test on a FewRel-format file without a names file: results.json lists the target's
    relations (with their ids as names), not the run's own test classes."""
    instance = lambda w: {"tokens": [w, "relates", "to", "it"], "h": ["a", "x", [[0]]], "t": ["b", "y", [[3]]]}  # noqa
    target = {rel: [instance(f"{rel}{i}") for i in range(12)] for rel in ("r_one", "r_two", "r_three")}
    path = tmp_path / "target.json"
    path.write_text(json.dumps(target))
    results = run_in_process([*FAST, "trainer.max_steps=0", "+data@eval.test.data=fewrel_file",
                              f"eval.test.data.path={path}", "eval.test.n_way=3", "eval.test.episodes=4"],
                             tmp_path / "run")
    assert results["test_classes"] == {"r_one": "r_one", "r_three": "r_three", "r_two": "r_two"}
    assert results["test_data"] == "target"
    assert read_json(tmp_path / "run" / "results.json")["test_classes"] == results["test_classes"]
