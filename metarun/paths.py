"""Where the shipped Hydra configs live: inside the wheel as `metarun.configs`, or `configs/` in a checkout."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def config_dir() -> Path:
    spec = importlib.util.find_spec("metarun.configs")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "run.yaml").is_file():
                return Path(loc)
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / "run.yaml").is_file():
        return checkout
    raise RuntimeError("metarun's configs were not found; reinstall the package (pip install metarun).")
