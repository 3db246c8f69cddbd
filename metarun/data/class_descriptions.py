"""Readable class names from a file: `data.class_descriptions=hwu64` (configs/class_descriptions/hwu64.json)
or a JSON path; `auto` takes the shipped file named after the data (`data.name`) where there is one.
Learners that read class names (`refiner=[name_prior]`, `objective=names`) embed these texts instead of the class ids:
HWU64's `iot_wemo_off` becomes "turn off the smart plug socket". The file:

    {"description": "where the texts come from", "names": {"iot_wemo_off": "turn off the smart plug socket", ...}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

from metarun.errors import ConfigError, DataError
from metarun.paths import config_dir

log = logging.getLogger("metarun")


def available() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "class_descriptions").glob("*.json"))


def load_class_descriptions(spec: str, classes: Collection[str], data_name: str) -> dict[str, str]:
    """{class id: text} of `spec` (a shipped name or a JSON path), checked against the data's `classes`:
    a file that describes none of them is refused (a file of another dataset); classes it leaves out
    keep their ids (a warning counts them, so a misspelt id shows)."""
    path = Path(spec).expanduser()
    if not path.suffix:
        path = config_dir() / "class_descriptions" / f"{spec}.json"
    if not path.is_file():
        raise ConfigError(f"data.class_descriptions={spec}: no such file; give a JSON path, auto, or one of "
                          f"{', '.join(available()) or '(none shipped)'}.")
    try:
        names = json.loads(path.read_bytes())["names"]  # bytes: UTF-8, or UTF-16/32 by their byte-order mark
        if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
            raise TypeError("`names` must map class ids to non-empty texts")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (or UTF-16 / 32 with a byte-order mark) text ({e.reason} at byte "
                        f"{e.start}); save it as UTF-8.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a class-descriptions file ({e}); expected "
                        f'{{"names": {{"<class id>": "<text>", ...}}}}.') from None
    if not set(names) & set(classes):
        raise DataError(f"{path} describes none of data={data_name}'s classes ({', '.join(sorted(classes)[:4])} ...); "
                        f"it names {', '.join(sorted(names)[:4])} ... Is it the file of another dataset?")
    left = [c for c in classes if c not in names]
    if left:
        log.warning("%s leaves %d of data=%s's %d classes undescribed (%s...): they are read as their ids",
                    path, len(left), data_name, len(classes), ", ".join(left[:3]))
    return dict(names)
