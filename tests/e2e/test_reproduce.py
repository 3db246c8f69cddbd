"""scripts/reproduce.sh end to end (its presets and usage are checked in tests/unit/test_table.py)."""

import os
import subprocess

from conftest import REPO


def test_reproduce_script_prints_a_preset_beside_its_paper(tmp_path):
    """`scripts/reproduce.sh mteb_banking77` end to end, on the tiny encoder (debug=fast)."""
    root = REPO
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"METARUN_REPRO_DIR": str(tmp_path)}
    res = subprocess.run(
        [
            "bash",
            str(root / "scripts" / "reproduce.sh"),
            "mteb_banking77",
            "debug=fast",
            "trainer.progress=false",
            "eval.test.draws=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = (tmp_path / "mteb_banking77" / "table_vs_published.md").read_text().splitlines()
    assert lines[0] == "| regime | model | banking77_8per_class ours | banking77_8per_class published |"
    tiny, published = lines[2].split(" | "), lines[3].split(" | ")
    assert tiny[:2] == ["| no names, inductive", "tiny"]
    assert float(tiny[2].split(" ± ")[0]) > 1.3  # 77-way: above chance, far below MiniLM
    assert published[1] == "all-MiniLM-L6-v2 frozen + logistic regression" and published[3] == "80.04 |"
    assert "| tiny |" in res.stdout
    assert "reproduce.sh mteb_banking77: 1 run, about 2 minutes on a 2-core CPU; results in" in res.stderr
    assert "table_vs_published.md" in res.stderr
