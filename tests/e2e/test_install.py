"""A non-editable `pip install .` finds its configs from any working directory."""

import os
import subprocess
import sys
from conftest import REPO



def test_wheel_install_finds_configs(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "metarun" / "configs" / "run.yaml").is_file()
    assert (target / "metarun" / "configs" / "class_splits" / "banking77.json").is_file()
    assert (target / "metarun" / "configs" / "hydra" / "launcher" / "slurm.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import metarun, metarun.paths; print(metarun.__file__); print(metarun.paths.config_dir())",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert probe.stdout.splitlines() == [str(target / "metarun" / "__init__.py"), str(target / "metarun" / "configs")]
    res = subprocess.run(
        [sys.executable, "-m", "metarun", "--cfg", "job", "data=hwu64"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bolt_name: hwu" in res.stdout
