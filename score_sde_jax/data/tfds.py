"""tensorflow-datasets input: ``tfds.data_source`` random access to a dataset prepared in the
array_record format (no TensorFlow at run time), with the official names and splits."""

from __future__ import annotations

import os

import numpy as np

from score_sde_jax.data import images as img

# config.data.dataset -> (tfds name, training split, evaluation split) of the official code.
TFDS_DATASETS = {
    "CIFAR10": ("cifar10", "train", "test"),
    "SVHN": ("svhn_cropped", "train", "test"),
    "CELEBA": ("celeb_a", "train", "validation"),
    "LSUN": ("lsun/{category}", "train", "validation"),
    "MNIST": ("mnist", "train", "test"),
    "CELEBAHQ": ("celeb_a_hq/1024", "train", "train"),
}

class DatasetNotPreparedError(FileNotFoundError):
    """A tensorflow-datasets dataset is not prepared (in array_record format) in the data_dir."""


def _default_data_dir() -> str:
    try:
        from tensorflow_datasets.core import constants

        return str(constants.get_default_data_dir())
    except (ImportError, AttributeError):
        return os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")


def tfds_source(config, split: str, resize: img.ResizeOp) -> img.MappedSource:
    """The :class:`images.MappedSource` of ``split`` ('train' / 'test') of
    ``config.data.tfds_name`` (or the official dataset of ``config.data.dataset``)."""
    import tensorflow_datasets as tfds

    data = config.data
    dataset = str(data.dataset).upper()
    default_name, train_split, eval_split = TFDS_DATASETS.get(dataset, ("", "train", "test"))
    name = data.get("tfds_name", "") or default_name.format(category=data.get("category", ""))
    if not name:
        raise ValueError(f"config.data.tfds_name is not set and data.dataset={data.dataset!r} "
                         "has no default tensorflow-datasets name")
    tfds_split = train_split if split == "train" else eval_split
    data_dir = data.get("data_dir", None) or None
    try:
        source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False,
                                  builder_kwargs={"file_format": "array_record"})
        length = len(source)
    except Exception as e:  # not found / not generated / wrong format: say how to prepare it
        where = data_dir or _default_data_dir()
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset '{name}' (split '{tfds_split}') is not prepared in "
            f"config.data.data_dir={where!r} ({type(e).__name__}: {str(e)[:200]}). Prepare it "
            "once in the array_record format -- this step needs TensorFlow, e.g. in a separate "
            "environment: pip install tensorflow tensorflow-datasets && tfds build "
            f"{name} --data_dir={where} --file_format=array_record (datasets with manual "
            "downloads, such as celeb_a_hq, also need --manual_dir); then set "
            "config.data.data_dir to that folder. Alternatively use data.source='npz' or "
            "'folder' with config.data.path.") from e

    def get(i: int) -> tuple[np.ndarray, int]:
        record = source[i]
        return np.asarray(record["image"]), int(record.get("label", 0))

    return img.MappedSource(length, get, resize, data.num_channels, f"tfds {name}")


