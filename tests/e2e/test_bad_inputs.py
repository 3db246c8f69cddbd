"""The bad-input matrix: config values, data files, FewRel files, checkpoints and run folders.

Every case runs against a copy of a finished run's folder. It must stop with a user error (the CLI
prints its message and exits 2, no traceback) whose message names the option or the file, and it
must leave the finished run exactly as it was: byte-identical files, no new results.json or DONE.
The config is checked before the folder is touched, so a bad value gets its own message, not the
folder's refusal. A few cases run through the CLI to check the exit code and the absence of a
traceback end to end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FAST, run_cli, run_in_process, snapshot
from metarun.errors import CheckpointError, MetarunError, RunDirError
from metarun.tracking.folder.run_dir import RunDir


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Data files for the cases: a good table, a table without a label column, FewRel files."""
    d = tmp_path_factory.mktemp("files")
    rows = [{"text": f"sentence {i} of {c}", "label": c} for c in "abcdefg" for i in range(12)]
    (d / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "nolabel.jsonl").write_text('{"text": "hello"}\n')
    (d / "cut.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "lab')
    (d / "bad_fewrel").mkdir()
    (d / "bad_fewrel" / "train_wiki.json").write_text(
        '{"P1": [{"tokens": ["a"], "h": ["a", "Q", [[3]]], "t": ["a", "Q", [[0]]]}]}')
    (d / "json_fewrel").mkdir()
    (d / "json_fewrel" / "val_wiki.json").write_text('{"P1": [')
    (d / "teacher.pt").write_bytes(b"not a checkpoint")
    (d / "names_bad.json").write_bytes(b"\xff\xfe\x00\xd8{")  # a UTF-16 mark, then a lone surrogate
    return d


TABLE = ["data=table", "data.classes={train: [a, b, c], val: [d, e], test: [f, g]}", "sampler.n_way=3",
         "eval.val.n_way=2", "eval.test.n_way=2"]

# case -> (arguments after FAST, the error class, texts its message must contain)
CASES = {
    # trainer
    "max_steps negative": (["trainer.max_steps=-1"], MetarunError, ["trainer.max_steps=-1"]),
    "max_steps not a number": (["trainer.max_steps=abc"], MetarunError, ["trainer.max_steps='abc'", "whole number"]),
    "lr zero": (["trainer.lr=0"], MetarunError, ["trainer.lr=0", "positive"]),
    "lr negative": (["trainer.lr=-1e-3"], MetarunError, ["trainer.lr=-0.001"]),
    "lr not a number": (["trainer.lr=fast"], MetarunError, ["trainer.lr='fast'"]),
    "meta_batch zero": (["trainer.meta_batch=0"], MetarunError, ["trainer.meta_batch=0"]),
    "eval_every zero": (["trainer.eval_every=0"], MetarunError, ["trainer.eval_every=0"]),
    "checkpoint_every zero": (["trainer.checkpoint_every=0"], MetarunError, ["trainer.checkpoint_every=0"]),
    "patience zero": (["callbacks.early_stopping.patience=0"], MetarunError, ["callbacks.early_stopping.patience=0"]),
    "grad_clip negative": (["trainer.grad_clip=-1"], MetarunError, ["trainer.grad_clip=-1"]),
    "precision unknown": (["trainer.precision=fp8"], MetarunError, ["trainer.precision='fp8'", "fp32"]),
    "schedule unknown": (["trainer.schedule=step"], MetarunError, ["trainer.schedule='step'", "cosine"]),
    "cuda without a GPU": (["trainer.device=cuda"], MetarunError, ["trainer.device='cuda'", "not available"]),
    # seed
    "seed not a number": (["seed=abc"], MetarunError, ["seed='abc'"]),
    "seed negative": (["seed=-1"], MetarunError, ["seed=-1", "0 to"]),
    # evaluation
    "test episodes zero": (["eval.test.episodes=0"], MetarunError, ["eval.test.episodes=0"]),
    "test episodes negative": (["eval.test.episodes=-3"], MetarunError, ["eval.test.episodes=-3"]),
    "val episodes zero": (["eval.val.episodes=0"], MetarunError, ["eval.val.episodes=0"]),
    "test n_way too large": (["eval.test.n_way=30"], MetarunError, ["30-way", "only 27 classes"]),
    "test shots zero": (["eval.test.shots=[0]"], MetarunError, ["eval.test.shots"]),
    "test queries zero": (["eval.test.n_query=0"], MetarunError, ["eval.test.n_query=0"]),
    "val max_per_class zero": (["eval.val.max_per_class=0"], MetarunError, ["eval.val.max_per_class=0"]),
    "oos_rate negative": (["eval.test.oos_rate=-1"], MetarunError,
                          ["eval.test.oos_rate=-1 is not valid", "whole number"]),
    "oos_rate not a number": (["eval.test.oos_rate=abc"], MetarunError, ["eval.test.oos_rate='abc' is not valid"]),
    "shots repeated": (["eval.test.shots=[1,1]"], MetarunError, ["names a value twice", "eval.test.shots=[1]"]),
    "per_class draws zero": (["eval=per_class", "eval.test.draws=0"], MetarunError, ["eval.test.draws"]),
    "per_class on a table": (
        [*TABLE[:-1], "data.path={files}/good.jsonl", "eval=per_class"],
        MetarunError,
        ["eval.test.data.bolt_name=banking"],
    ),
    # sampler
    "k_shot zero": (["sampler.k_shot=0"], MetarunError, ["k_shot"]),
    "k_shot too large": (["sampler.k_shot=300"], MetarunError, ["K+Q = 300+5", "has "]),
    "n_way too large": (["sampler.n_way=1000"], MetarunError, ["1000-way"]),
    "nota without a nota learner": (["sampler.na_rate=1"], MetarunError, ["sampler.na_rate=1", "learner.nota=true"]),
    # learners and encoders
    "distance unknown": (
        ["learner.distance=manhattan"],
        MetarunError,
        ["learner.distance='manhattan'", "euclidean, cosine"],
    ),
    "inner steps negative": (["learner=maml", "learner.inner_steps=-1"], MetarunError, ["learner.inner_steps"]),
    "inner lr zero": (["learner=maml", "learner.inner_lr=0"], MetarunError, ["learner.inner_lr"]),
    "adapt unknown": (
        ["learner=maml", "learner.adapt=some"],
        MetarunError,
        ["learner.adapt='some'", "all, head, top_k"],
    ),
    "top_k zero": (["learner=maml", "learner.adapt=top_k", "learner.top_k=0"], MetarunError,
                   ["learner.top_k=0 is not valid", "learner.adapt=head"]),
    "top_k above the layers": (["learner=maml", "learner.adapt=top_k", "learner.top_k=9"], MetarunError,
                               ["has 2 transformer layers, so give 1 to 2"]),
    "lora rank above the layers": (["learner=maml", "learner.adapt=lora", "learner.lora_rank=100000"], MetarunError,
                                   ["learner.lora_rank=100000", "give at most 32"]),
    "lstm_meta with lora": (["learner=lstm_meta", "learner.adapt=lora"], MetarunError,
                            ["learner.adapt='lora'", "all, head, top_k"]),
    "class descriptions not text": (["data.class_descriptions={files}/names_bad.json"], MetarunError,
                                    ["names_bad.json is not UTF-8", "save it as UTF-8"]),
    "step size unknown": (["learner=maml", "learner.step_size=adam"], MetarunError, ["scalar, per_step, per_param"]),
    "test head unknown": (["learner=finetune", "learner.test_head=svm"], MetarunError, ["learner.test_head='svm'"]),
    "distill without a teacher": (["learner=distill"], MetarunError, ["learner.teacher="]),
    "distill from a broken teacher": (
        ["learner=distill", "learner.teacher={files}/teacher.pt"],
        MetarunError,
        ["teacher.pt"],
    ),
    "pooling unknown": (["encoder.pooling=max"], MetarunError, ["encoder.pooling='max'", "mean, cls, entity_start"]),
    "option the learner lacks": (["+learner.warmth=2"], MetarunError, ["warmth", "Options it accepts"]),
    # data files
    "unknown split": (["data.split=7"], MetarunError, ["data.split=7", "1, 2, 3, 4, 5"]),
    "missing table": ([*TABLE, "data.path={files}/none.tsv"], MetarunError, ["none.tsv does not exist", "data.path"]),
    "table without a label column": (
        [*TABLE, "data.path={files}/nolabel.jsonl"],
        MetarunError,
        ["nolabel.jsonl, line 1", "data.label_column"],
    ),
    "table without a path": (["data=table"], MetarunError, ["data.path is required"]),
    "table cut short": ([*TABLE, "data.path={files}/cut.jsonl"], MetarunError, ["cut.jsonl, line 2"]),
    "table class missing": (
        ["data=table", "data.path={files}/good.jsonl", "data.classes={train: [a, b, zz], val: [d, e], test: [f, g]}"],
        MetarunError,
        ["zz"],
    ),
    # FewRel files
    "missing fewrel file": (
        ["data=fewrel", "data.root={files}/nowhere"],
        MetarunError,
        ["train_wiki.json does not exist", "data.root"],
    ),
    "malformed fewrel": (
        ["data=fewrel", "data.root={files}/bad_fewrel"],
        MetarunError,
        ["train_wiki.json, relation P1, instance 0", "outside"],
    ),
    "fewrel not json": (
        ["data=fewrel_val_split", "data.root={files}/json_fewrel"],
        MetarunError,
        ["val_wiki.json is not valid JSON"],
    ),
    # the run folder itself
    "another learner in a finished folder": (
        ["learner=matching"],
        RunDirError,
        ["finished run of another config", "learner.name"],
    ),
    "another lr in a finished folder": (["trainer.lr=0.01"], RunDirError, ["trainer.lr: 0.001 there, 0.01 now"]),
    "fewer steps than the finished run": (["trainer.max_steps=3"], RunDirError, ["trainer.max_steps: 6 there, 3 now"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named_and_the_run_untouched(case, finished_run, files, tmp_path):
    """Bad input is refused with its name and the finished run is untouched."""
    args, error, texts = CASES[case]
    args = [a.replace("{files}", str(files)) for a in args]
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir)
    with pytest.raises(error) as caught:
        run_in_process([*FAST, *args], run_dir)
    for text in texts:
        assert text in str(caught.value), str(caught.value)
    assert snapshot(run_dir) == before  # nothing written, deleted or relabelled


def test_a_live_process_holds_the_folder_and_a_second_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "DONE").unlink()  # a run in progress
    before = snapshot(run_dir)
    with RunDir(run_dir):  # this test process holds the lock, as a running metarun would
        res = run_cli([*FAST, "seed=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "another metarun process" in res.stderr and "hydra.run.dir" in res.stderr
    assert snapshot(run_dir) == before


def test_the_lock_of_a_dead_process_is_stale(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from metarun.tracking.folder.run_dir import RunDir; "
            f"d = RunDir({str(tmp_path)!r}).lock(); d.hold(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
        RunDir(tmp_path).lock()
    holder.kill()
    holder.wait()
    RunDir(tmp_path).lock().unlock()  # the kernel released the dead holder's lock


def test_a_corrupt_checkpoint_of_an_unfinished_run_is_kept(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    for name in ("DONE", "results.json"):
        (run_dir / name).unlink()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 cut")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="last.pt cannot be read"):
        run_in_process(FAST, run_dir)
    after = snapshot(run_dir)
    assert after["checkpoints/last.pt"] == before["checkpoints/last.pt"] and "results.json" not in after


@pytest.mark.parametrize(
    "args,texts",
    [
        (["learner=protonett"], ["Could not find 'learner/protonett'", "protonet"]),
        (["trainer.max_stepz=5"], ["trainer.max_stepz is not a config key", "did you mean trainer.max_steps"]),
        (["hydra.run.dir={file}/run"], ["cannot make the run folder", "is a file, not a folder", "hydra.run.dir="]),
        (["seed=-1"], ["seed=-1"]),
        (["data@eval.test.data=hwu64"], ["+data@eval.test.data=hwu64"]),
        (["learner=matching"], ["finished run of another config", "left as it is"]),
    ],
)
def test_the_cli_exits_2_with_one_paragraph(args, texts, finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir)
    (tmp_path / "file").write_text("")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    res = run_cli([*FAST, f"hydra.run.dir={run_dir}", *args], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert "HYDRA_FULL_ERROR" not in res.stderr or "Could not find" in res.stderr  # one paragraph, not Hydra's too
    for text in texts:
        assert text in res.stderr, res.stderr[-2000:]
    assert snapshot(run_dir) == before


def test_a_run_folder_with_dot_dot_makes_no_folder_on_the_way(tmp_path):
    """hydra.run.dir=a/../b/run is b/run: no empty `a` is left (Hydra's mkdir made it)."""
    res = run_cli([*FAST, "trainer.max_steps=0", "eval.test.episodes=2", "eval.test.shots=[1]",
                   f"hydra.run.dir={tmp_path}/a/../b/run"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "b" / "run" / "results.json").is_file() and not (tmp_path / "a").exists()


def test_a_damaged_saved_config_is_named_as_damaged_not_missing(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / ".hydra" / "config.yaml").write_text("learner: [unclosed\n")
    with pytest.raises(RunDirError, match=r"config.yaml is not valid YAML .*damaged"):
        run_in_process(FAST, run_dir)
    from metarun.eval_cli import evaluate_run

    with pytest.raises(RunDirError, match=r"config.yaml is not valid YAML"):
        evaluate_run(run_dir, [], tmp_path / "eval")
