"""Data sources are validated where they are opened: every file of an image folder is decoded
and its size checked before the first training step; bad files are an error listing them, or,
with ``data.skip_bad_files``, skipped with a warning naming each; other sizes are announced
once with the sizes seen; an image source on a config without image keys is one line."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_helpers import ROOT, subprocess_env, tiny_toy_config

from score_sde_jax import checkpoints, datasets, run_lib

HINT = " (SCORE_SDE_JAX_TRACEBACK=1 shows the traceback)"


def _png(path: Path, h: int, w: int, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), np.uint8)).save(
        buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:-40])  # its header is fine; its pixels are cut short
    return path


def _folder_config(path: Path, size: int = 8, dataset: str = "FOLDER", **data):
    config = tiny_toy_config()
    for key, value in {"source": "folder", "path": str(path), "dataset": dataset,
                       "image_size": size, "num_channels": 1, "skip_bad_files": False,
                       **data}.items():
        config.data[key] = value
    config.training.batch_size = config.eval.batch_size = 4
    return config


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env=subprocess_env(XLA_FLAGS="", SCORE_SDE_JAX_CACHE="off"))


def _one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr.splitlines()[-1]


def test_a_corrupt_image_anywhere_in_the_folder_stops_training_before_it_starts(tmp_path):
    """One truncated file among 40: named in one line, before the work directory exists (before,
    only the first batch was read, and training died when it reached the file)."""
    folder = tmp_path / "faces"
    for k in range(40):
        _png(folder / f"{k:02d}.png", 8, 8, k)
    _truncated_png(folder / "27.png")
    workdir = tmp_path / "run"
    rel = os.path.relpath(folder, ROOT)
    line = _one_line(_main("--config=configs/digits.py", f"--workdir={os.path.relpath(workdir, ROOT)}",
                           "--mode=train", "--config.data.source=folder",
                           f"--config.data.path={rel}", "--config.training.batch_size=8"))
    assert line.startswith(f"main.py: error: ValueError: 1 of 40 image files under {rel} cannot "
                           "be used: 27.png (OSError: "), line
    assert line.endswith("Fix or remove them, or set config.data.skip_bad_files=True to train "
                         "without them" + HINT)
    assert not workdir.exists()


def test_bad_files_are_listed_or_skipped_with_a_warning_each(tmp_path, caplog):
    for k in range(3):
        _png(tmp_path / f"good{k}.png", 8, 8)
    bad = [_truncated_png(tmp_path / "cut.png")]
    for k in range(11):
        bad.append(tmp_path / f"text{k:02d}.png")
        bad[-1].write_text("not a picture")
    with pytest.raises(ValueError) as e:
        datasets.get_source(_folder_config(tmp_path), "train")
    message = str(e.value)
    assert message.startswith(f"12 of 15 image files under {tmp_path} cannot be used: cut.png "
                              "(OSError: ")
    assert "text08.png (UnidentifiedImageError: cannot identify image file" in message
    assert "text09.png" not in message and "; and 2 more. Fix or remove them" in message

    with caplog.at_level(logging.WARNING):
        source = datasets.get_source(_folder_config(tmp_path, skip_bad_files=True), "train")
    assert len(source) == 3
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 12
    assert all(f"{tmp_path}: skipping {p}: " in m for p, m in zip(bad, skipped, strict=True))
    assert source.get_batch([0, 1, 2])[0].shape == (3, 8, 8, 1)

    for path in bad:
        path.unlink()
    with pytest.raises(FileNotFoundError, match="none of the 1 image files"):
        _truncated_png(tmp_path / "cut.png")
        for k in range(3):
            (tmp_path / f"good{k}.png").unlink()
        datasets.get_source(_folder_config(tmp_path, skip_bad_files=True), "train")


def test_sizes_the_resize_rule_cannot_handle_are_bad_files(tmp_path):
    _png(tmp_path / "big.png", 150, 150)
    _png(tmp_path / "small.png", 100, 120)
    with pytest.raises(ValueError, match=r"1 of 2 image files under .* cannot be used: small.png "
                                         r"\(100x120 cannot be resized: cannot crop 140x140"):
        datasets.get_source(_folder_config(tmp_path, dataset="CELEBA"), "train")


def test_mixed_sizes_are_announced_once_with_the_sizes_seen(tmp_path, caplog):
    for k in range(3):
        _png(tmp_path / f"a{k}.png", 12, 12)
    _png(tmp_path / "b.png", 10, 16)
    _png(tmp_path / "c.png", 8, 8)
    config = _folder_config(tmp_path)
    with caplog.at_level(logging.WARNING):
        for split in ("train", "test"):  # the data stream reopens the folder: still once
            batches = datasets.get_dataset(config, split, prefetch=0)
            for _ in range(3):
                assert next(batches)["image"].shape == (4, 8, 8, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: images of 3 sizes: 12x12 (3 files), 10x16 (1 file), 8x8 (1 file); they are "
        "resized to 8x8 (config.data.image_size=8), non-square ones after a central square crop"]
    caplog.clear()
    for name in ("a0", "a1", "a2", "b"):
        (tmp_path / f"{name}.png").unlink()
    with caplog.at_level(logging.WARNING):
        datasets.get_source(config, "train")
    assert not caplog.records  # all 8x8: nothing to announce


def test_an_image_source_on_the_toy_config_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    line = _one_line(_main("--config=configs/toy_gmm.py", f"--workdir={os.path.relpath(workdir, ROOT)}",
                           "--mode=train", "--config.data.source=npz"))
    assert line == ("main.py: error: ValueError: config.data.source='npz' reads images, but this "
                    "config has no config.data.image_size / config.data.num_channels (a toy "
                    "config? its data are points drawn by data.source='toy')" + HINT)
    assert not workdir.exists()


def test_data_failing_mid_run_stop_training_with_the_steps_done_saved(tmp_path, monkeypatch,
                                                                        caplog):
    """A batch that cannot be read mid-run (a file damaged after the check, a bad tfds record):
    the state of the last update is saved first, and the same command resumes from it."""
    config = tiny_toy_config()  # checkpoints at steps 5, 10, 15, 20
    good = datasets.local_batches

    def damaged(config, start):
        for i, batch in enumerate(good(config, start), start):
            if i == 7:
                raise ValueError("faces/27.png cannot be read any more (OSError: image file is "
                                 "truncated)")
            yield batch

    monkeypatch.setattr(datasets, "local_batches", damaged)
    with pytest.raises(run_lib.DataFailedError) as e:
        run_lib.train(config, tmp_path)
    meta = tmp_path / checkpoints.PREEMPTION_DIR
    assert str(e.value) == (
        "training stopped at step 7: reading the data failed (ValueError: faces/27.png cannot be "
        "read any more (OSError: image file is truncated)); the state of step 7 was saved to "
        f"{meta / '7'}. Fix the data and run the same command again to resume")
    assert checkpoints.all_steps(meta) == [7]
    monkeypatch.setattr(datasets, "local_batches", good)
    with caplog.at_level(logging.INFO):
        state = run_lib.train(config, tmp_path)
    assert f"resuming from {meta / '7'} at step 7 of 20" in caplog.text
    assert int(state.step) == 20


def test_a_record_that_cannot_be_decoded_is_named():
    def get(i):
        if i == 3:
            raise OSError("broken data stream when reading image file")
        return np.zeros((4, 4, 1), np.uint8), 0

    source = datasets.img.MappedSource(5, get, lambda x: x.astype(np.float32), 1, "tfds cifar10")
    assert source.get_batch([0, 1])[0].shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match=r"^tfds cifar10: example 3 cannot be read \(OSError: "
                                         r"broken data stream"):
        source.get_batch([2, 3])
