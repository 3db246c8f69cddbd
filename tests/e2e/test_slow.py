"""Real-encoder checks (minutes on CPU): run with `python -m pytest -m slow`."""

import pytest

from conftest import read_json, run_cli


@pytest.mark.slow
def test_frozen_minilm_protonet_banking77_numbers(tmp_path):
    # Frozen all-MiniLM-L6-v2 + ProtoNet, BANKING77 split 1, 600 episodes: 78.11 / 94.69 measured here.
    """Frozen minilm protonet on banking77 matches known numbers."""
    run_dir = tmp_path / "run"
    res = run_cli(
        ["trainer.max_steps=0", "trainer.progress=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    r = read_json(run_dir / "results.json")["results"]
    assert 76.0 <= r["test/5way_1shot"]["acc"] <= 80.0
    assert 93.0 <= r["test/5way_5shot"]["acc"] <= 96.0
