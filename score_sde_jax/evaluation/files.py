"""Files of the evaluation and sampling modes: image grids, scatter plots, atomic ``.npz`` writes
and JSON-lines records. Plain NumPy / PIL; nothing here knows about models or SDEs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (any float shape) -> uint8 ``clip(255 x, 0, 255)``, truncated as the
    official evaluation does (``np.clip(x * 255, 0, 255).astype(np.uint8)``)."""
    return np.clip(np.asarray(images, np.float32) * 255.0, 0.0, 255.0).astype(np.uint8)


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile images (N, H, W, C) into one uint8 image (rows of ``nrow`` images, default
    ⌈√N⌉), with ``padding`` black pixels between and around them (torchvision's layout).

    Float images are taken to be in [0, 1]. Returns (H', W', C) uint8.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    n, h, w, c = images.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    grid = np.zeros((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images):
        top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int | None = None,
                    padding: int = 2) -> Path:
    """Write :func:`image_grid` of (N, H, W, C) images, C in {1, 3}, as a PNG file."""
    grid = image_grid(images, nrow, padding)
    if grid.shape[-1] not in (1, 3):
        raise ValueError(f"a PNG grid needs 1 or 3 channels, got {grid.shape[-1]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def scatter_png(panels: dict[str, np.ndarray], path: str, size: int = 260, extent: float = 8.0) -> None:
    """One square scatter panel per entry of ``panels`` ((n, 2) arrays), side by side."""
    img = Image.new("RGB", (size * len(panels), size + 16), "white")
    draw = ImageDraw.Draw(img)
    for j, (title, pts) in enumerate(panels.items()):
        x0 = j * size
        draw.rectangle([x0, 16, x0 + size - 1, size + 15], outline=(180, 180, 180))
        draw.text((x0 + 4, 2), title[:40], fill="black")
        uv = (np.asarray(pts) + extent) / (2 * extent) * (size - 1)
        for u, v in uv[(uv >= 0).all(1) & (uv < size).all(1)]:
            draw.point((x0 + u, 16 + size - 1 - v), fill=(30, 80, 200))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)


def save_scatter(points: np.ndarray, path: str | Path, title: str = "samples") -> Path:
    """Scatter plot (PNG) of 2-D points (n, 2), framed to fit them (at least [-4, 4]²)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"a scatter plot needs (n, 2) points, got shape {points.shape}")
    finite = points[np.isfinite(points).all(axis=1)]
    extent = max(4.0, 1.05 * float(np.abs(finite).max())) if len(finite) else 4.0
    scatter_png({title: points}, str(path), extent=extent)
    return Path(path)


def savez_atomic(path: str | Path, **arrays: np.ndarray) -> Path:
    """``np.savez`` to ``path`` through a temporary file and a rename: readers (and a restarted
    evaluation) see either no file or the whole file, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending '.npz'
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)
    return path


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read eagerly (the file is closed on return)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def append_jsonl(path: str | Path, record: Mapping) -> None:
    """Append ``record`` (plus a ``time`` stamp) as one JSON line; NumPy scalars become floats."""
    def plain(v):
        if isinstance(v, np.generic | np.ndarray):
            return v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
        return v

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({**{k: plain(v) for k, v in record.items()}, "time": time.time()})
    with open(path, "a") as f:
        f.write(line + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSON-lines file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
