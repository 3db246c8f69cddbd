"""The `metarun` command: Hydra composes the config, `run(cfg)` does the work.

Errors the user can fix (MetarunError) print as one paragraph and exit with status 2, no traceback.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from metarun.errors import MetarunError
from metarun.paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def _main(cfg: DictConfig) -> float | None:
    from metarun.run import run  # imported here so `metarun --help` stays fast

    try:
        results = run(cfg)
    except MissingMandatoryValue as e:
        _fail(f"the config value {e.full_key} is required but not set; give it on the command line, "
              f"e.g. `metarun {e.full_key}=...`.")
    except MetarunError as e:
        _fail(str(e))
    scores = [v["acc"] for k, v in results["results"].items() if k.startswith("val/")]
    return sum(scores) / len(scores) if scores else None  # the value sweepers optimise


def _fail(message: str) -> None:
    print(f"metarun: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    _main()
