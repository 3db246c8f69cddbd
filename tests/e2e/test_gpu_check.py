"""scripts/gpu_check.py: without CUDA it runs its matrix on the CPU and says so (a few rows here; the
whole matrix is the GPU machine's job)."""

import importlib.util
import json

from conftest import REPO


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_matrix_names_every_learner_and_objective(capsys):
    module = gpu_check()
    assert module.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"learner_protonet", "learner_maml", "learner_snail", "objective_mlm", "objective_consistency",
            "refiner_name_prior_learned", "k0_names_alone", "out_of_scope_threshold", "minilm"} <= set(names)
    assert module.main(["--only", "learner_nonesuch"]) == 2


def test_rows_run_on_the_cpu_and_report_what_they_did(tmp_path, capsys):
    out = tmp_path / "check.json"
    rows = "learner_anil,objective_mlm_on_maml,k0_names_alone,query_refiner_rectify"
    assert gpu_check().main(["--only", rows, "--out", str(out), "--dir", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA here: the CPU in fp32" in printed and "4 passed, 0 failed" in printed
    report = json.loads(out.read_text())
    assert [r["status"] for r in report["rows"]] == ["ok"] * 4 and report["failed"] == []
    assert "test/5way_0shot" in report["rows"][2]["test"]
