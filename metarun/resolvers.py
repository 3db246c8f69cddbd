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
    a path-like or long value becomes its last part and a hash of the value (the same value gives the
    same name in every job and relaunch), and no `/` or other unsafe character is left. A name still
    over `limit` shortens those parts further; only past that is the whole name cut and hashed."""
    def value(v: str, tail_len: int) -> str:
        if "/" in v or "\\" in v or len(v) > 40:
            tail = re.sub(r"[^A-Za-z0-9._-]", "_", re.split(r"[/\\]", v.rstrip("/\\"))[-1])[:tail_len].strip(".")
            return f"{tail or 'path'}-{hashlib.sha256(v.encode()).hexdigest()[:8]}"
        return v

    def name(tail_len: int) -> str:
        def item(text: str) -> str:
            key, sep, val = text.partition("=")
            return f"{key}{sep}{value(val, tail_len)}" if sep else value(text, tail_len)

        return re.sub(r"[^A-Za-z0-9._,=+@:\[\]{}-]", "_", ",".join(map(item, items)))

    items = re.split(r",(?=[^,=\[\]{}]+=)", overrides) if overrides else []  # commas inside [..] stay
    for tail_len in (24, 10, 0):
        out = name(tail_len)
        if len(out) <= limit:
            return out
    return f"{out[: limit - 9]}-{hashlib.sha256(out.encode()).hexdigest()[:8]}"


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
