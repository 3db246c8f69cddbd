"""End-to-end runs for input files: the unit tests are in tests/unit/test_input_files.py."""

from __future__ import annotations

import logging


from conftest import TABLE_ROWS, FAST, csv_file, run_cli, run_in_process


def test_the_cli_refuses_a_bad_file_with_exit_2(tmp_path):
    """The cli refuses a bad file with exit 2 one paragraph and no run folder."""
    path = csv_file(tmp_path, b"text,label\nok,a\ncaf\xe9,a\n")
    run_dir = tmp_path / "run"
    for data in (["data=hf", "data.path=csv", f"data.data_files={path}"], ["data=table", f"data.path={path}"]):
        proc = run_cli(
            [*FAST, *data, "data.classes={train: [a], val: [b], test: [c]}", f"hydra.run.dir={run_dir}"], tmp_path
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "rows.csv, line 3: bytes that are not utf-8" in proc.stderr
        assert not run_dir.exists()


def test_a_table_run_says_it_is_named_after_its_file(tmp_path, caplog):
    path = csv_file(tmp_path, "text,label\n" + TABLE_ROWS, "my_intents.csv")
    with caplog.at_level(logging.INFO, "metarun"):
        results = run_in_process(
            [
                *FAST,
                "data=table",
                f"data.path={path}",
                "trainer.max_steps=0",
                "sampler.n_way=2",
                "sampler.k_shot=1",
                "sampler.n_query=1",
                "eval.val.n_way=1",
                "eval.val.shots=[1]",
                "eval.val.n_query=1",
                "eval.test.n_way=2",
                "eval.test.shots=[1]",
                "eval.test.n_query=1",
                "data.classes={train: [a, b], val: [c], test: [d, e]}",
            ],
            tmp_path / "run",
        )
    assert results["data"] == "my_intents" and "data my_intents (named after its file" in caplog.text
    assert results["train_inputs"] == "none"  # no training step ran
    assert results["split"] == "classes listed in data.classes"  # which classes: the saved config lists them
