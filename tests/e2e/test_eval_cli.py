"""`metarun-eval RUN_DIR [overrides]`: a finished run's checkpoint tested again, its folder untouched."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, read_json, run_in_process, snapshot
from metarun.errors import ConfigError
from metarun.eval_cli import evaluate_run


def test_a_new_protocol_on_another_dataset_goes_to_a_new_folder(finished_run, tmp_path):
    before = snapshot(finished_run)
    out = tmp_path / "eval"
    overrides = ["eval.test.episodes=7", "eval.test.shots=[1]", "+data@eval.test.data=hwu64"]
    results = evaluate_run(finished_run, overrides, out)
    assert snapshot(finished_run) == before  # the source run is untouched
    assert results["source_run"] == str(finished_run) and (out / "DONE").is_file()
    saved = read_json(out / "results.json")
    assert saved["test_data"] == "hwu64" and saved["results"]["test/5way_1shot"]["episodes"] == 7
    assert saved["best_step"] == read_json(finished_run / "results.json")["best_step"]


def test_the_same_protocol_reproduces_the_runs_test_scores(finished_run, tmp_path):
    results = evaluate_run(finished_run, [], tmp_path / "again")
    source = read_json(finished_run / "results.json")["results"]
    assert {k: v for k, v in results["results"].items()} == {k: v for k, v in source.items() if k.startswith("test/")}


@pytest.mark.parametrize("override", ["sampler.k_shot=1", "learner=maml", "trainer.lr=0.1"])
def test_only_the_evaluation_may_change(finished_run, tmp_path, override):
    with pytest.raises(ConfigError, match="may change only the evaluation"):
        evaluate_run(finished_run, [override], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_command_exits_2_on_a_folder_that_is_not_a_run(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "metarun.eval_cli", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "not a metarun run folder" in res.stderr and "Traceback" not in res.stderr


def test_an_option_newer_than_the_run_is_named_and_plus_adds_it(finished_run, tmp_path):
    """A run saved before eval.test.transductive_steps existed: the plain override is refused with
    what to type, and `+` adds the key (transductive prototypes on an old checkpoint)."""
    import yaml

    old = tmp_path / "old"
    import shutil

    shutil.copytree(finished_run, old)
    config = yaml.safe_load((old / ".hydra" / "config.yaml").read_text())
    del config["eval"]["test"]["transductive_steps"]
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(
        ConfigError, match=r"eval.test.transductive_steps is not a key .* `\+eval.test.transductive_steps=...` adds one"
    ):
        evaluate_run(old, ["eval.test.transductive_steps=3"], tmp_path / "x")
    results = evaluate_run(old, ["+eval.test.transductive_steps=3", "eval.test.episodes=4"], tmp_path / "td")
    assert results["results"]["test/5way_1shot"]["episodes"] == 4


def test_a_killed_run_is_tested_at_its_best_checkpoint(finished_run, tmp_path, caplog):
    """A killed run is tested at its best checkpoint or refused without one."""
    import logging
    import shutil

    from metarun.errors import RunDirError

    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed)
    for f in ("DONE", "results.json"):
        (killed / f).unlink()
    with caplog.at_level(logging.WARNING, "metarun"):
        results = evaluate_run(killed, [], tmp_path / "a")
    assert "did not finish (no DONE): testing its best checkpoint so far" in caplog.text
    source = read_json(finished_run / "results.json")["results"]
    assert results["results"] == {k: v for k, v in source.items() if k.startswith("test/")}
    (killed / "checkpoints" / "best.pt").unlink()  # killed before its first validation
    with pytest.raises(RunDirError, match="stopped before its first validation.*Resume it first"):
        evaluate_run(killed, [], tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_saved_config_naming_code_that_is_gone_is_one_message(finished_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    config = old / ".hydra" / "config.yaml"
    text = config.read_text().replace("metarun.learners.metric.protonet.ProtoNet", "metarun.learners.gone.Gone")
    config.write_text(text)
    with pytest.raises(
        ConfigError,
        match=r"learner._target_=metarun.learners.gone.Gone cannot be imported.*"
        r"Choose one of learner=.*protonet",
    ):
        evaluate_run(old, [], tmp_path / "x")


def test_a_run_saved_before_objectives_and_refiners_is_evaluated(tmp_path):
    """A run whose saved config spells the name prior and the trainer's keys the old way
    (learner.label_prior=learned, trainer.patience, trainer.train_on_features) and whose checkpoint
    keeps the learned weight as `label_weight_raw` is evaluated with today's code, to the same scores."""
    import yaml

    from metarun.tracking.folder.checkpoint import Checkpointer

    run = tmp_path / "run"
    new = run_in_process([*FAST, "refiner=[name_prior]", "refiner.name_prior.learned=true", "trainer.max_steps=2"],
                         run)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    prior = config.pop("refiner")["name_prior"]
    config["learner"] |= {"label_prior": "learned", "label_weight": prior["weight"], "label_template": "{name}",
                          "mlm_weight": 0.0, "support_tuning_steps": 0}
    config["trainer"] |= {"patience": None, "train_on_features": config.pop("train_on_features"),
                          "debug_kill_at_step": None}
    del config["callbacks"]
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("best.pt", "last.pt"):
        path = Checkpointer(run).dir / name
        saved = torch.load(path, weights_only=True)
        saved["model"]["label_weight_raw"] = saved["model"].pop("refiners.0.weight_raw")
        torch.save(saved, path)
    again = evaluate_run(run, [], tmp_path / "eval")
    assert again["results"]["test/5way_1shot"] == new["results"]["test/5way_1shot"]
    assert again["regime"] == "names, inductive"


def test_the_readme_tour_command_tests_a_run_on_every_class_of_another_dataset(finished_run, tmp_path):
    """README's `metarun-eval RUN +data@eval.test.data=hwu64 eval.test.data.test_all_classes=true`, as
    written (shrunk to a few episodes), and the message for a key the composed target lacks."""
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    assert "metarun-eval outputs/<date>/<run folder> +data@eval.test.data=hwu64 eval.test.data.test_all_classes=true" \
        in readme
    results = evaluate_run(finished_run, ["+data@eval.test.data=hwu64", "eval.test.data.test_all_classes=true",
                                          "eval.test.episodes=3"], tmp_path / "tour")
    assert results["test_data"] == "hwu64" and len(results["test_classes"]) == 64
    with pytest.raises(ConfigError, match=r"eval.test.data.nonesuch is not a key of the run's config "
                                          r"\(\+data@eval.test.data=hwu64 composes that part without it\)"):
        evaluate_run(finished_run, ["+data@eval.test.data=hwu64", "eval.test.data.nonesuch=1"], tmp_path / "bad")
