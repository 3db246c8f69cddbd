"""What ran: code version, command line, host, device and library versions."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def git_state(folder: Path) -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if commit and status is not None else None}


def collect(device: str) -> dict:
    import hydra
    import transformers

    import metarun

    code = Path(metarun.__file__).resolve().parent.parent
    return {
        "git": git_state(code),
        "metarun_version": metarun.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "argv": sys.argv,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "cuda_device": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "hydra": hydra.__version__},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
