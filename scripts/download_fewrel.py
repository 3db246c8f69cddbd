"""Download the official FewRel files (Han et al. 2018; Gao et al. 2019) into the data folder that
`data=fewrel` reads ($METARUN_DATA_DIR/fewrel, else ~/.cache/metarun/fewrel):

    python scripts/download_fewrel.py                       # train_wiki, val_wiki, val_pubmed, pid2name
    python scripts/download_fewrel.py --dest DIR --files val_wiki.json

Needs network access to GitHub. Each file is written to a temporary name, checked (FewRel files must
parse as `{relation: [instances]}`), then moved into place, so an interrupted download never leaves a
half file behind. Existing files are kept unless --force.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

BASE_URL = "https://raw.githubusercontent.com/thunlp/FewRel/master/data"
FILES = ["train_wiki.json", "val_wiki.json", "val_pubmed.json", "pid2name.json"]


def default_dest() -> Path:
    root = os.environ.get("METARUN_DATA_DIR") or Path.home() / ".cache" / "metarun"
    return Path(root) / "fewrel"


def check(path: Path, name: str) -> str:
    """Parse a downloaded file; -> a one-line summary. Raises MetarunError on a malformed file."""
    from metarun.data.fewrel import read_fewrel, relation_names

    if name == "pid2name.json":
        return f"{len(relation_names(path.parent, path.name))} relation names"
    data = read_fewrel(path)
    return f"{len(data.classes)} relations, {len(data)} instances"


def download(name: str, base_url: str, dest: Path, force: bool = False) -> str:
    target = dest / name
    if target.exists() and not force:
        return f"{name}: kept the existing file ({check(target, name)})"
    from metarun.files import atomic_write

    url = f"{base_url.rstrip('/')}/{name}"
    summary = []

    def fetch(out) -> None:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))

    # a temporary file with the umask's mode, checked, then moved into place
    atomic_write(target, fetch, check=lambda tmp: summary.append(check(tmp, name)))
    return f"{name}: {summary[0]} -> {target}"


def main(argv: list[str] | None = None) -> int:
    from metarun.errors import MetarunError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=default_dest(), help="folder to write (default: %(default)s)")
    parser.add_argument("--base-url", default=BASE_URL, help="where the files live (default: %(default)s)")
    parser.add_argument("--files", nargs="+", default=FILES, help="file names (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="download again over existing files")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.files:
        try:
            print(download(name, args.base_url, args.dest, args.force))
        except (OSError, MetarunError) as e:  # URLError is an OSError
            failed += 1
            print(f"{name}: failed: {e}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(args.files)} files failed; without network access, copy the files from "
              f"https://github.com/thunlp/FewRel into {args.dest}.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
