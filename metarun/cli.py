"""The `metarun` command: Hydra composes the config, `run(cfg)` does the work.

Errors the user can fix (MetarunError) print as one paragraph and exit with status 2, no traceback.
In a sweep (`metarun -m ...`) no job takes the others down: a failing job writes FAILED (with the
error) into its folder and the sweep goes on; unexpected errors are retried `retries` times, each
attempt resuming from the job's last checkpoint. A job whose folder is marked DONE is skipped, so a
crashed sweep is relaunched with the same command and `hydra.sweep.dir=<its folder>`.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from metarun.errors import MetarunError
from metarun.paths import config_dir

log = logging.getLogger("metarun")

# `${pid:}` in hydra.run.dir: runs started in the same microsecond by different processes still get
# different folders. Registered on import, so launcher workers that unpickle `_main` have it too.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def _main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from metarun.run import FAILED, finished_results, run  # imported here so `metarun --help` stays fast

    hc = HydraConfig.get()
    run_dir, sweep = Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN
    if cfg.get("skip_done", True) and (done := finished_results(run_dir, cfg)) is not None:
        log.info("skipping %s: a run of this config finished there (DONE); delete DONE or set skip_done=false "
                 "to run it again", run_dir)
        return _score(done)
    attempts = 1 + (int(cfg.get("retries", 0)) if sweep else 0)
    for attempt in range(1, attempts + 1):
        try:
            return _score(run(cfg))
        except (MissingMandatoryValue, MetarunError) as e:  # the config is wrong: retrying cannot help
            message = _message(e)
            if not sweep:
                _fail(message)
            _record_failure(run_dir / FAILED, f"metarun: error: {message}\n")
            return None
        except Exception:
            if not sweep:
                raise
            _record_failure(run_dir / FAILED, traceback.format_exc())
            if attempt < attempts:
                log.warning("job in %s failed (attempt %d of %d); retrying from its last checkpoint",
                            run_dir, attempt, attempts)
    return None


def _score(results: dict) -> float | None:
    scores = [v["acc"] for k, v in results["results"].items() if k.startswith("val/")]
    return sum(scores) / len(scores) if scores else None  # the value sweepers optimise


def _message(e: Exception) -> str:
    if isinstance(e, MissingMandatoryValue):
        return (f"the config value {e.full_key} is required but not set; give it on the command line, "
                f"e.g. `metarun {e.full_key}=...`.")
    return str(e)


def _record_failure(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    log.error("job in %s failed; the sweep goes on. Error in %s:\n%s", path.parent, path, text.strip().splitlines()[-1])


def _fail(message: str) -> None:
    print(f"metarun: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    _main()
