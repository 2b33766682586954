"""The one home of files (L0: imports nothing of the package; plain NumPy / PIL).

Readers: ``.npz`` archives (:func:`read_npz`), images and arrays given on the command line
(:func:`read_array`, :func:`list_files`), state_dicts of ``.pth`` / ``.npz`` files
(:func:`read_state_dict`). Writers: image grids and scatter plots (PNG), the samples writer every
mode uses (:func:`write_samples`), atomic ``.npz`` writes (:func:`savez_atomic`: a reader sees
the whole file or none) and JSON-lines records. Nothing here knows about models or SDEs, and
nothing here deletes a file: writers replace only the file they are asked to write.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRID_MAX, SCATTER_MAX = 1024, 10_000  # samples drawn in the PNG of a streamed write (the first ones)
ARRAY_SUFFIXES = (".npz", ".npy")
_NPZ_KEYS = ("image", "images", "x", "data", "mask")


# ----------------------------------------------------------------------------- readers
def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read eagerly (the file is closed on return); a file that
    is not an .npz archive (text, a truncated download, a single .npy array) is a ValueError
    naming it."""
    try:
        data = np.load(path)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = ("it is neither a zip archive of arrays nor an array (a text file?)"
               if "pickled" in str(e) else f"{type(e).__name__}: {e}")
        raise ValueError(f"{path} is not a readable .npz file: {why}") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not an .npz file (it holds one .npy array)")
    with data:
        return {k: data[k] for k in data.files}


def read_array(path: str | Path, what: str) -> np.ndarray:
    """The array of one input file: a PNG / JPEG image as (1, H, W[, C]); an ``.npy`` array; an
    ``.npz`` array named 'image', 'images', 'x', 'data' or 'mask' (or its only array). ``what``
    ('image', 'mask') names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as im:
                return np.asarray(im)[None]
        except OSError as e:  # PIL.UnidentifiedImageError: not an image at all
            raise ValueError(f"{what} file {path} is not a readable {suffix} image ({e})") from e
    if suffix == ".npy":
        try:
            return np.load(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{what} file {path} is not a readable .npy array ({e})") from e
    if suffix == ".npz":
        arrays = read_npz(path)
        key = next((k for k in _NPZ_KEYS if k in arrays), None)
        if key is None and len(arrays) == 1:
            key = next(iter(arrays))
        if key is None:
            raise ValueError(f"{what} file {path} holds {sorted(arrays)}; expected one array or "
                             f"one named {' / '.join(_NPZ_KEYS)}")
        return arrays[key]
    raise ValueError(f"{what} file {path}: unsupported format {suffix!r} (use .png, .jpg, .npz, .npy)")


def to_unit(a: np.ndarray) -> np.ndarray:
    """uint8 arrays divided by 255, others as float32."""
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def list_files(spec: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES + ARRAY_SUFFIXES) -> list[Path]:
    """The files of ``spec``: comma-separated files, or folders contributing their files with one
    of ``suffixes`` in name order."""
    paths: list[Path] = []
    for item in (s.strip() for s in str(spec).split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise FileNotFoundError(f"image folder {path} holds no {' / '.join(suffixes)} files")
            paths += found
        else:
            paths.append(path)
    if not paths:
        raise ValueError(f"no image files in {spec!r}")
    return paths


def read_state_dict(path: str | Path, hint: str = "") -> dict[str, Any]:
    """A PyTorch state_dict (or training checkpoint dict) from a ``.pth`` / ``.pt`` file (needs
    torch; tensors become NumPy arrays) or an ``.npz`` file of arrays. ``hint`` is added to the
    message when torch is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    if path.suffix == ".npz":
        return read_npz(path)
    if path.suffix not in (".pth", ".pt"):
        raise ValueError(f"{path}: expected a .pth, .pt or .npz state_dict")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install torch){hint}") from e

    def numpy(v):
        if isinstance(v, dict):
            return {k: numpy(u) for k, u in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(numpy(u) for u in v)
        return v.detach().cpu().numpy() if hasattr(v, "detach") else v

    return numpy(torch.load(path, map_location="cpu", weights_only=True))


# ----------------------------------------------------------------------------- writers


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


def write_samples(stem: str | Path, x: np.ndarray, title: str = "samples", nrow: int | None = None,
                  **extra: np.ndarray) -> dict[str, Path | None]:
    """Samples in data space as ``{stem}.npz`` and ``{stem}.png``; returns ``{'npz', 'png'}``.

    Images (N, H, W, C): ``samples`` uint8 (:func:`to_uint8`) and ``samples_float`` float32
    (unclipped), and a grid of the clipped images. Flat points (N, D): ``samples`` float32, and a
    scatter plot titled ``title`` when D = 2 (no PNG otherwise). ``nrow``: images a row of the
    grid (default ⌈√N⌉). ``extra`` arrays go into the ``.npz`` as they are."""
    stem = Path(stem)
    x = np.asarray(x, np.float32)
    png: Path | None = stem.with_suffix(".png")
    if x.ndim == 2:
        npz = savez_atomic(stem.with_suffix(".npz"), samples=x, **extra)
        png = save_scatter(x, png, title) if x.shape[1] == 2 else None
    else:
        npz = savez_atomic(stem.with_suffix(".npz"), samples=to_uint8(x), samples_float=x, **extra)
        png = save_image_grid(np.clip(x, 0.0, 1.0), png, nrow=nrow)
    return {"npz": npz, "png": png}


def _npy_into(zf: zipfile.ZipFile, name: str, dtype, shape: tuple, chunks: Iterable[np.ndarray]) -> None:
    """``name.npy`` of ``shape`` written into an open zip from C-ordered row chunks."""
    dtype, rows = np.dtype(dtype), 0
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype)
            rows += len(chunk)
            f.write(chunk.tobytes())
    if rows != shape[0]:
        raise ValueError(f"{name}: {rows} rows were written for a shape {shape}")


def write_samples_stream(stem: str | Path, chunks: Callable[[], Iterable[np.ndarray]], n: int,
                         title: str = "samples", **extra: np.ndarray) -> dict[str, Path | None]:
    """:func:`write_samples` of ``n`` samples given as row chunks, never all in memory: every
    call of ``chunks()`` yields the samples (data space, float32) in order, chunk by chunk; the
    ``.npz`` (the same arrays as :func:`write_samples`) is streamed into a zip of ``.npy`` files
    (written atomically, as :func:`savez_atomic`). The PNG shows the first :data:`GRID_MAX`
    images, or scatters the first :data:`SCATTER_MAX` 2-D points."""
    stem = Path(stem)
    npz, first = stem.with_suffix(".npz"), next(iter(chunks()), None)
    if first is None:
        raise ValueError("write_samples_stream needs at least one sample")
    shape, images = (int(n), *np.shape(first)[1:]), np.ndim(first) == 4
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(f".{npz.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        if images:
            _npy_into(zf, "samples", np.uint8, shape, (to_uint8(c) for c in chunks()))
            _npy_into(zf, "samples_float", np.float32, shape, chunks())
        else:
            _npy_into(zf, "samples", np.float32, shape, chunks())
        for name, value in extra.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value))
    os.replace(tmp, npz)
    limit, shown, got = GRID_MAX if images else SCATTER_MAX, [], 0
    for chunk in chunks():
        shown.append(np.asarray(chunk, np.float32)[:limit - got])
        got += len(shown[-1])
        if got >= limit:
            break
    x, png = np.concatenate(shown), stem.with_suffix(".png")
    if images:
        return {"npz": npz, "png": save_image_grid(np.clip(x, 0.0, 1.0), png)}
    return {"npz": npz, "png": save_scatter(x, png, title) if x.shape[1] == 2 else None}
