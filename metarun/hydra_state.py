"""What Hydra knows about the current job, for code that also runs without Hydra (tests, `run(cfg,
run_dir)`, metarun-eval): each accessor returns None when no Hydra job is running."""

from __future__ import annotations

from pathlib import Path


def _config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def output_dir() -> str | None:
    """The job's output folder (Hydra made it before the task started)."""
    hc = _config()
    return hc.runtime.output_dir if hc is not None else None


def sweep_dir() -> Path | None:
    """The sweep folder of a multirun job (its trackers group by it), else None."""
    from hydra.types import RunMode

    hc = _config()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir).resolve()


def overrides() -> list[str] | None:
    """The job's command-line overrides."""
    hc = _config()
    return list(hc.overrides.task) if hc is not None else None
