"""``python -m score_sde_jax.convert`` as a user types it (relative paths, from the folder it
runs in): it never deletes or replaces what it did not write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from score_sde_jax.convert import check_out

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NPZ = HERE / "data" / "ncsnpp_ve_continuous_small.npz"
CONFIG = f'''import json
from score_sde_jax.cli import load_config

def get_config():
    config = load_config({str(ROOT / "configs/ve/cifar10_ncsnpp_continuous.py")!r})
    ref = json.load(open({str(HERE / "data" / "ncsnpp_ve_continuous_small.json")!r}))
    for section in ("model", "data"):
        config[section].update(ref[section])
    return config
'''


def convert(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, "-m", "score_sde_jax.convert", "--config", "small.py",
                           "--checkpoint", str(NPZ), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "small.py").write_text(CONFIG)
    (tmp_path / "notes.txt").write_text("mine")
    return tmp_path


def test_convert_refuses_to_delete_and_overwrites_only_its_own_output(folder, monkeypatch):
    first = convert(folder, "--out", "converted")
    assert first.returncode == 0, first.stderr
    assert "wrote converted:" in first.stdout and (folder / "converted").is_dir()
    # An existing output: refused in one line, untouched; --overwrite replaces it.
    again = convert(folder, "--out", "converted")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "--out=converted exists" in again.stderr
    assert convert(folder, "--out", "converted", "--overwrite").returncode == 0
    # Never the current folder, an empty path, or a folder of someone else's files.
    (folder / "runs" / "mywork").mkdir(parents=True)
    (folder / "runs" / "mywork" / "keep.txt").write_text("keep")
    bad = convert(folder, "--out", "runs/mywork", "--overwrite")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "not an orbax checkpoint written by this command" in bad.stderr
    monkeypatch.chdir(folder)  # the check main() runs first, for the current folder itself
    for out in (".", "", "./"):
        with pytest.raises(ValueError, match="would write over the current folder"):
            check_out(out, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "small.py").is_file()
    assert (folder / "runs" / "mywork" / "keep.txt").read_text() == "keep"
    # --workdir: the checkpoint of the same step in a trained run is never replaced.
    assert convert(folder, "--workdir", "runs/imported").returncode == 0
    step = next((folder / "runs" / "imported" / "checkpoints").iterdir())
    before = sorted(p.name for p in step.rglob("*"))
    refused = convert(folder, "--workdir", "runs/imported")
    assert refused.returncode == 1 and f"{step} exists" in refused.stderr.replace("\n", "")
    assert sorted(p.name for p in step.rglob("*")) == before
