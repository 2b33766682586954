"""Every file of an image folder checked where the folder is opened, before the first step.

:func:`check_images` decodes each file completely (a truncated or damaged file fails here, not
in the middle of training) and reads its size; each distinct size is then passed once through
the dataset's resize operation on a blank image, so a size that operation cannot handle (an
image smaller than CelebA's 140 x 140 crop) is found too. Files are decoded by a pool of
threads (PIL releases the GIL while decoding).

The outcome: a file that cannot be used is an error listing the bad files (the first
:data:`MAX_LISTED` of them, and how many more), or, with ``config.data.skip_bad_files``, a
warning naming each skipped file; images that are not ``S x S`` are announced once, with the
sizes seen and how many files have each. A folder is checked once per process for as long as
no file in it changes (its files' sizes and modification times are the cache key), so the
data stream reopening the folder costs a ``stat`` per file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MAX_LISTED = 10  # bad files named in the error (then "and N more")
_CHECKED: dict[tuple, tuple[list[int], collections.Counter]] = {}


def image_size(path: Path) -> tuple[int, int] | str:
    """(height, width) of the image file at ``path`` after decoding all of it, or the reason
    it cannot be used."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes every pixel: finds truncated and damaged files
            width, height = im.size
    except Exception as e:  # noqa: BLE001 -- any failure to decode makes the file unusable
        return f"{type(e).__name__}: {e}"
    if not width or not height:
        return "the image has no pixels"
    return height, width


def _size_errors(sizes: Sequence[tuple[int, int]], resize: Callable, channels: int) -> dict:
    """{(h, w): reason} for the sizes the resize operation rejects (tried on blank images)."""
    errors = {}
    for h, w in sizes:
        try:
            resize(np.zeros((h, w, channels), np.uint8))
        except ValueError as e:
            errors[(h, w)] = f"{h}x{w} cannot be resized: {e}"
    return errors


def _listing(bad: list[tuple[Path, str]], root: Path) -> str:
    named = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in bad[:MAX_LISTED])
    more = len(bad) - MAX_LISTED
    return named + (f"; and {more} more" if more > 0 else "")


def check_images(root: Path, files: Sequence[Path], resize: Callable, channels: int, size: int,
                 skip_bad: bool) -> list[int]:
    """Check every file (see the module docstring); returns the indices of the usable ones.

    Raises ValueError listing the bad files unless ``skip_bad``, and FileNotFoundError when no
    file is usable."""
    stats = [os.stat(p) for p in files]
    key = (str(root.resolve()), size, channels, skip_bad,
           tuple((str(p), s.st_size, s.st_mtime_ns) for p, s in zip(files, stats, strict=True)))
    if key in _CHECKED:
        return _CHECKED[key][0]
    workers, began = min(32, (os.cpu_count() or 1) + 4), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(image_size, files))
    logging.info("%s: decoded and checked %d image files in %.1f s", root, len(files),
                 time.perf_counter() - began)
    sizes = collections.Counter(f for f in found if isinstance(f, tuple))
    rejected = _size_errors(list(sizes), resize, channels)
    reasons = [f if isinstance(f, str) else rejected.get(f) for f in found]
    bad = [(p, why) for p, why in zip(files, reasons, strict=True) if why is not None]
    if bad and not skip_bad:
        raise ValueError(f"{len(bad)} of {len(files)} image files under {root} cannot be used: "
                         f"{_listing(bad, root)}. Fix or remove them, or set "
                         "config.data.skip_bad_files=True to train without them")
    for path, why in bad:
        logging.warning("%s: skipping %s: %s (config.data.skip_bad_files)", root, path, why)
    good = [i for i, why in enumerate(reasons) if why is None]
    if not good:
        raise FileNotFoundError(f"none of the {len(files)} image files under {root} can be used")
    usable = collections.Counter({s: n for s, n in sizes.items() if s not in rejected})
    announce_sizes(str(root), usable, size)
    _CHECKED[key] = (good, usable)
    return good


def announce_sizes(what: str, sizes: collections.Counter, size: int) -> None:
    """One warning when images of ``what`` (counted by (h, w) in ``sizes``) will be cropped or
    resized to ``size`` x ``size``, naming the sizes seen (the most common first)."""
    if set(sizes) <= {(size, size)}:
        return
    seen = sizes.most_common()
    listed = ", ".join(f"{h}x{w} ({n} file{'s' if n > 1 else ''})" for (h, w), n in seen[:MAX_LISTED])
    if len(seen) > MAX_LISTED:
        listed += f" and {len(seen) - MAX_LISTED} more sizes"
    crop = (", non-square ones after a central square crop"
            if any(h != w for h, w in sizes) else "")
    logging.warning("%s: images of %d size%s: %s; they are resized to %dx%d "
                    "(config.data.image_size=%d)%s", what, len(seen), "s" if len(seen) > 1 else "",
                    listed, size, size, size, crop)
