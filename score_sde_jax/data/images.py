"""Image sources with random access, and the per-dataset resizing of the official pipeline.

A source has ``len(source)`` and ``source.get_batch(indices) -> (images, labels)`` with images
float32 (B, S, S, C) in [0, 1] (S = ``data.image_size``, C = ``data.num_channels``) and labels
int32 (B,). The resizing follows the official ``datasets.py`` (with PIL in place of
``tf.image``; PIL's reducing filters are anti-aliased like ``tf.image.resize(antialias=True)``):

* CIFAR10, SVHN, DIGITS: bilinear resize to S x S.
* CELEBA: central 140 x 140 crop, then bilinear resize (shorter side) to S.
* LSUN: S == 128: bilinear resize of the shorter side to S, then central crop; otherwise
  central square crop, bicubic resize, back to uint8 (as the official ``crop_resize``).
* MNIST: 28 x 28 kept at S = 28, zero-padded to the centre for 28 < S <= 32, else resized.
* anything else (CelebAHQ, FFHQ, folders, npz files): central square crop + bicubic resize.
An image already S x S is left unchanged (apart from LSUN's crop rule, which then is a no-op).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from score_sde_jax.data import folder_check
from score_sde_jax.files import read_npz

ResizeOp = Callable[[np.ndarray], np.ndarray]  # (H, W, C) uint8 or [0,1] float -> (S, S, C) f32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_WARNED: set[tuple] = set()  # (source, h, w, size) already warned about by warn_if_resized


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]; float images pass through as float32."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def pil_resize(image: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
    """Resize a float (H, W, C) image channel by channel with PIL (anti-aliased when shrinking)."""
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[method]
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32))
                           .resize((width, height), resample)) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


def central_crop(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    width = height if width is None else width
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {height}x{width} out of an image of shape {image.shape}")
    return image[top:top + height, left:left + width]


def resize_small(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side is ``size`` (bilinear), keeping the aspect ratio."""
    h, w = image.shape[:2]
    ratio = size / min(h, w)
    return pil_resize(to_float(image), int(round(h * ratio)), int(round(w * ratio)))


def crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Central square crop, bicubic resize to size x size; uint8 input is truncated back to the
    8-bit grid after resizing (the official ``tf.cast(image, tf.uint8)``)."""
    image = central_crop(image, min(image.shape[:2]))
    if image.dtype != np.uint8 or image.shape[:2] == (size, size):
        return pil_resize(to_float(image), size, size, "bicubic")
    out = pil_resize(image.astype(np.float32), size, size, "bicubic")  # in 0..255 units
    return np.floor(np.clip(out, 0.0, 255.0)) / np.float32(255.0)


def _pad_or_resize(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h <= size <= h + 4 and w <= size <= w + 4:
        top, left = (size - h) // 2, (size - w) // 2
        return np.pad(to_float(image), ((top, size - h - top), (left, size - w - left), (0, 0)))
    return pil_resize(to_float(image), size, size)


def get_resize_op(dataset: str, size: int) -> ResizeOp:
    """The official resizing of ``config.data.dataset`` (see the module docstring)."""
    dataset = dataset.upper()
    if dataset in ("CIFAR10", "SVHN", "DIGITS"):
        return lambda img: pil_resize(to_float(img), size, size)
    if dataset == "CELEBA":
        return lambda img: resize_small(central_crop(img, 140), size)
    if dataset == "LSUN" and size == 128:
        return lambda img: central_crop(resize_small(img, size), size)
    if dataset == "MNIST":
        return lambda img: _pad_or_resize(img, size)
    return lambda img: crop_resize(img, size)


def match_channels(image: np.ndarray, num_channels: int, what: str) -> np.ndarray:
    """Give an (H, W[, C]) image ``num_channels`` channels (grey is repeated to RGB)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == num_channels:
        return image
    if image.shape[-1] == 1:
        return np.repeat(image, num_channels, axis=-1)
    raise ValueError(f"{what} has {image.shape[-1]} channels but config.data.num_channels is "
                     f"{num_channels}")


class MappedSource:
    """Random access over raw examples ``get(i) -> (image, label)``, resized on the fly."""

    def __init__(self, length: int, get: Callable[[int], tuple[np.ndarray, int]],
                 resize: ResizeOp, num_channels: int, what: str):
        self._length, self._get, self._resize = length, get, resize
        self._num_channels, self._what = num_channels, what

    def __len__(self) -> int:
        return self._length

    def get_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for i in indices:
            try:
                image, label = self._get(int(i))
            except ValueError:  # already names the example
                raise
            except Exception as e:  # noqa: BLE001 -- a damaged record: name it
                raise ValueError(f"{self._what}: example {int(i)} cannot be read "
                                 f"({type(e).__name__}: {e})") from e
            image = match_channels(np.asarray(image), self._num_channels, self._what)
            images.append(self._resize(image))
            labels.append(label)
        return np.stack(images).astype(np.float32), np.asarray(labels, np.int32)


class ArraySource:
    """In-memory examples: uint8 or float (N, ...) data and int labels (N,)."""

    def __init__(self, data: np.ndarray, labels: np.ndarray):
        if len(data) != len(labels):
            raise ValueError(f"{len(data)} examples but {len(labels)} labels")
        self.data, self.labels = data, np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.data)

    def get_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        return to_float(self.data[indices]), self.labels[indices]


def prepared_array_source(images: np.ndarray, labels: np.ndarray, resize: ResizeOp,
                          size: int, num_channels: int, what: str) -> ArraySource:
    """Resize (N, H, W[, C]) images once, keeping uint8 data as uint8 when no resize is needed."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{what}: images must be (N, H, W) or (N, H, W, C), got {images.shape}")
    if images.shape[1:3] == (size, size) and images.shape[-1] == num_channels:
        return ArraySource(images, labels)
    prepared = np.stack([resize(match_channels(im, num_channels, what)) for im in images])
    return ArraySource(prepared.astype(np.float32), labels)


def npz_source(path: str, resize: ResizeOp, size: int, num_channels: int) -> ArraySource:
    """``config.data.path``: an .npz with 'image' uint8 (N, H, W[, C]) and optional 'label'."""
    file = Path(path).expanduser()
    if not path or not file.is_file():
        raise FileNotFoundError(f"config.data.path={path!r}: no such .npz file (data.source='npz')")
    data = read_npz(file)
    if "image" not in data:
        raise KeyError(f"{file} has no 'image' array (it has {sorted(data)})")
    images = data["image"]
    labels = data["label"] if "label" in data else np.zeros(len(images), np.int32)
    if images.dtype != np.uint8:
        raise ValueError(f"{file}: 'image' must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim in (3, 4):
        warn_if_resized(str(file), images.shape[1:3], size)
    return prepared_array_source(images, labels, resize, size, num_channels, str(file))


def warn_if_resized(what: str, shape: tuple[int, ...], size: int) -> None:
    """Log a warning (once per source and shape) when images of (H, W) ``shape`` will be
    resized to ``size`` x ``size``."""
    h, w = (int(d) for d in shape)
    if (h, w) != (size, size) and (what, h, w, size) not in _WARNED:
        _WARNED.add((what, h, w, size))
        crop = "" if h == w else ", after a central square crop (the image is not square)"
        logging.warning("%s: images are %dx%d; they are resized to %dx%d "
                        "(config.data.image_size=%d)%s", what, h, w, size, size, size, crop)


def _folder_files(root: Path) -> tuple[list[Path], list[int]]:
    def is_image(p):
        return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    loose = sorted(p for p in root.iterdir() if is_image(p))
    classes = sorted(d for d in root.iterdir() if d.is_dir()
                     and any(is_image(p) for p in d.rglob("*")))
    if loose and classes:
        raise ValueError(f"{root} mixes images with class folders {[c.name for c in classes]}; "
                         "put every image in a class folder, or none")
    if not classes:
        return loose, [0] * len(loose)
    files, labels = [], []
    for label, folder in enumerate(classes):
        found = sorted(p for p in folder.rglob("*") if is_image(p))
        files += found
        labels += [label] * len(found)
    return files, labels


def folder_source(path: str, resize: ResizeOp, num_channels: int, size: int,
                  skip_bad_files: bool = False) -> MappedSource:
    """``config.data.path``: a folder of PNG/JPEG images, optionally one sub-folder per class.

    Every file is decoded and its size checked here (:mod:`score_sde_jax.data.folder_check`):
    bad files are an error listing them, or skipped with a warning each when
    ``skip_bad_files``; sizes other than ``size`` x ``size`` are announced once."""
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise FileNotFoundError(f"config.data.path={path!r}: no such folder (data.source='folder')")
    files, labels = _folder_files(root)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {root}")
    good = folder_check.check_images(root, files, resize, num_channels, size, skip_bad_files)
    files, labels = [files[i] for i in good], [labels[i] for i in good]
    mode = "L" if num_channels == 1 else "RGB"

    def get(i: int) -> tuple[np.ndarray, int]:
        try:
            with Image.open(files[i]) as im:
                return np.asarray(im.convert(mode)), labels[i]
        except Exception as e:  # noqa: BLE001 -- changed since the check: name the file
            raise ValueError(f"{files[i]} cannot be read any more ({type(e).__name__}: {e}); it "
                             "was checked when the folder was opened") from e

    return MappedSource(len(files), get, resize, num_channels, str(root))


DIGITS_NUM_TRAIN = 1500  # of scikit-learn's 1797 digits; the remaining 297 are the test split


def digits_source(split: str, resize: ResizeOp, size: int, num_channels: int) -> ArraySource:
    """scikit-learn's 8x8 handwritten digits (values 0..16 -> [0, 1]); no download needed.

    The first 1500 images are the training split, the other 297 the test split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    part = slice(0, DIGITS_NUM_TRAIN) if split == "train" else slice(DIGITS_NUM_TRAIN, None)
    images = (digits.images[part] / 16.0).astype(np.float32)
    return prepared_array_source(images, digits.target[part], resize, size, num_channels,
                                 "sklearn digits")
