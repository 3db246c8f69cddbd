"""The config resolvers metarun's YAML files use, registered when `metarun` is imported (so the CLI,
launcher workers that unpickle its task function, and tests all have them):

- `${pid:}` in hydra.run.dir: runs started in the same microsecond by different processes still get
  different folders;
- `${safe_dirname:${hydra.job.override_dirname}}`: sweep job folder names that stay inside the sweep;
- `${stem:${oc.select:.path,table}}`: a data config named after its file (or the first of several values
  that is set).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from omegaconf import OmegaConf


def safe_dirname(overrides: str, limit: int = 120) -> str:
    """Hydra's `override_dirname` ("k=v,k2=v2") as one folder name that stays inside the sweep folder:
    a path-like or long value becomes its last part and a hash of the whole (stable across
    relaunches), and no `/` or other unsafe character is left."""
    def value(v: str) -> str:
        if "/" in v or "\\" in v or len(v) > 40:
            tail = re.sub(r"[^A-Za-z0-9._-]", "_", re.split(r"[/\\]", v.rstrip("/\\"))[-1])[:24].strip(".")
            return f"{tail or 'path'}-{hashlib.sha256(v.encode()).hexdigest()[:8]}"
        return v

    def item(text: str) -> str:
        key, sep, val = text.partition("=")
        return f"{key}{sep}{value(val)}" if sep else value(text)

    items = re.split(r",(?=[^,=\[\]{}]+=)", overrides) if overrides else []  # commas inside [..] stay
    out = re.sub(r"[^A-Za-z0-9._,=+@:\[\]{}-]", "_", ",".join(map(item, items)))
    if len(out) > limit:
        out = f"{out[: limit - 9]}-{hashlib.sha256(out.encode()).hexdigest()[:8]}"
    return out


def file_stem(*values) -> str:
    """`${stem:${.path}}`: a data config named after its file (the first, for a list of files; the first
    value's, for {split: files}); with several arguments, the first that is set (`${stem:${.data_files},
    ${.path}}`: the files, else the hub id's last part)."""
    first = next((v for v in values if v is not None), "data")
    while True:
        if OmegaConf.is_dict(first) or isinstance(first, dict):
            first = next(iter(first.values()), "data")
        elif OmegaConf.is_list(first) or isinstance(first, (list, tuple)):
            first = first[0] if len(first) else "data"
        else:
            return Path(str(first)).stem


OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)
OmegaConf.register_new_resolver("stem", file_stem, replace=True)
