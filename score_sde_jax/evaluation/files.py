"""Files of the evaluation and sampling modes: image grids, scatter plots, atomic ``.npz`` writes
and JSON-lines records. Plain NumPy / PIL; nothing here knows about models or SDEs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from score_sde_jax.data.images import read_npz


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (any float shape) -> uint8 ``clip(255 x, 0, 255)``, truncated as the
    official evaluation does (``np.clip(x * 255, 0, 255).astype(np.uint8)``)."""
    return np.clip(np.asarray(images, np.float32) * 255.0, 0.0, 255.0).astype(np.uint8)


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2, scale: int = 1,
               pad_value: int = 0) -> np.ndarray:
    """Tile images (N, H, W, C) into one uint8 image: rows of ``nrow`` images (default
    ⌈√N⌉), each enlarged ``scale`` times (nearest neighbour: every pixel becomes a
    ``scale`` x ``scale`` block), with ``padding`` pixels of grey level ``pad_value`` between
    and around them (torchvision's layout); empty cells are ``pad_value`` too.

    Float images are taken to be in [0, 1]. Returns (H', W', C) uint8 with
    H' = rows (scale H + padding) + padding, W' = nrow (scale W + padding) + padding.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c),
                   pad_value, np.uint8)
    for i, image in enumerate(images):
        top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int | None = None,
                    padding: int = 2, min_size: int = 512) -> Path:
    """Write :func:`image_grid` of (N, H, W, C) images, C in {1, 3}, as a PNG file: small images
    are enlarged by the integer factor (nearest neighbour) that makes the grid at least
    ``min_size`` pixels wide, and separated by a thin mid-grey border of ``padding`` pixels
    (visible against black and white backgrounds alike)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[0] > 0:
        ncol = nrow or math.ceil(math.sqrt(images.shape[0]))
        scale = max(1, math.ceil(min_size / (ncol * images.shape[2])))
    else:
        scale = 1  # image_grid reports the bad shape
    grid = image_grid(images, nrow, padding, scale=scale, pad_value=128)
    if grid.shape[-1] not in (1, 3):
        raise ValueError(f"a PNG grid needs 1 or 3 channels, got {grid.shape[-1]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


_INK, _FRAME, _DOT = (40, 40, 40), (150, 150, 150), (30, 80, 200)


def _ticks(extent: float) -> list[float]:
    """About 2-3 round tick values on each side of 0 within [-extent, extent]."""
    raw = extent / 2.5
    step = 10 ** math.floor(math.log10(raw))
    step = next(m * step for m in (1, 2, 5, 10) if m * step >= raw)
    k = math.floor(extent / step + 1e-9)
    return [i * step for i in range(-k, k + 1)]


def scatter_png(panels: Mapping[str, np.ndarray], path: str | Path, size: int = 260,
                extent: float | None = None, ncols: int | None = None,
                title: str | None = None) -> Path:
    """Scatter plots of 2-D points, one square panel per entry of ``panels`` (title -> (n, 2)
    array), ``ncols`` panels a row (default: all in one row), every panel on the same scale
    [-extent, extent]² (default: fit all finite points, at least [-1, 1]²) with axes, round tick
    values and the panel's title; ``title`` goes above them all. Points outside the frame are
    counted in the panel's corner. Returns ``path``."""
    arrays = {name: np.asarray(pts, np.float64).reshape(-1, 2) for name, pts in panels.items()}
    if not arrays:
        raise ValueError("scatter_png needs at least one panel")
    if extent is None:
        finite = [a[np.isfinite(a).all(1)] for a in arrays.values()]
        top = max((float(np.abs(a).max()) for a in finite if len(a)), default=1.0)
        extent = max(1.0, 1.05 * top)
    ncols = ncols or len(arrays)
    nrows = math.ceil(len(arrays) / ncols)
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    left, bottom, head, gap = 40, 20, 20, 12  # margins of a panel: tick labels, title
    cell_w, cell_h = left + size + gap, head + size + bottom
    top0 = 26 if title else 4
    img = Image.new("RGB", (ncols * cell_w + 4, top0 + nrows * cell_h + 4), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((img.width // 2, 4), title, fill="black", font=font, anchor="mt")
    ticks = _ticks(extent)

    def to_px(v):  # data coordinate -> pixel offset inside the frame
        return (np.asarray(v) + extent) / (2 * extent) * (size - 1)

    for j, (name, pts) in enumerate(arrays.items()):
        x0 = 2 + (j % ncols) * cell_w + left
        y0 = top0 + (j // ncols) * cell_h + head
        draw.text((x0 + size // 2, y0 - 3), name, fill="black", font=font, anchor="mb")
        draw.rectangle([x0, y0, x0 + size - 1, y0 + size - 1], outline=_FRAME)
        for t in ticks:
            label = f"{t:g}"
            u, v = x0 + float(to_px(t)), y0 + size - 1 - float(to_px(t))
            draw.line([u, y0 + size - 1, u, y0 + size + 3], fill=_INK)
            draw.text((u, y0 + size + 4), label, fill=_INK, font=small, anchor="mt")
            draw.line([x0 - 4, v, x0, v], fill=_INK)
            draw.text((x0 - 6, v), label, fill=_INK, font=small, anchor="rm")
        uv = np.stack([to_px(pts[:, 0]), size - 1 - to_px(pts[:, 1])], axis=1)
        inside = np.isfinite(uv).all(1) & (uv >= 0).all(1) & (uv <= size - 2).all(1)
        for u, v in uv[inside]:
            draw.rectangle([x0 + u, y0 + v, x0 + u + 1, y0 + v + 1], fill=_DOT)
        if (~inside).any():
            corner, note = (x0 + size - 4, y0 + 4), f"{int((~inside).sum())} outside"
            draw.rectangle(draw.textbbox(corner, note, font=small, anchor="rt"), fill="white")
            draw.text(corner, note, fill=(200, 0, 0), font=small, anchor="rt")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_scatter(points: np.ndarray, path: str | Path, title: str = "samples") -> Path:
    """Scatter plot (PNG) of 2-D points (n, 2) titled ``title``, framed to fit them (at least
    [-4, 4]²)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"a scatter plot needs (n, 2) points, got shape {points.shape}")
    finite = points[np.isfinite(points).all(axis=1)]
    extent = max(4.0, 1.05 * float(np.abs(finite).max())) if len(finite) else 4.0
    return scatter_png({title: points}, path, size=400, extent=extent)


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


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (which weights / statistics an evaluation used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read eagerly (the file is closed on return); a file
    that is not an .npz archive is a ValueError naming it."""
    return read_npz(path)


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
