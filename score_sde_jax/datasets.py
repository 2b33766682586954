"""Input pipeline: NumPy batches from tensorflow-datasets, .npz files, image folders, the embedded
scikit-learn digits, or 2-D toy distributions -- no TensorFlow needed.

``get_dataset`` returns an iterator of ``{'image': float32, 'label': int32 (B,)}`` batches. Images
are (B, S, S, C) in [0, 1] (uniformly dequantized to [0, 1) when asked) -- *not* yet scaled: the
training / evaluation step applies ``get_data_scaler(config)`` (to [-1, 1] when
``config.data.centered``), as in the official code. Toy data are (B, D) points under 'image'.

``config.data.source`` picks where examples come from (default 'tfds'):
  'tfds'    ``tfds.data_source(config.data.tfds_name, data_dir=config.data.data_dir)`` (random
            access to a dataset prepared in the array_record format);
  'npz'     ``config.data.path``: 'image' uint8 (N, H, W[, C]) and optional 'label';
  'folder'  ``config.data.path``: PNG/JPEG images, optionally one sub-folder per class;
  'digits'  scikit-learn's 8x8 digits resized to ``data.image_size`` (1500 train / 297 test);
  'toy'     ``data.toy`` (or ``data.dataset``): 'gmm', 'checkerboard', 'two_moons', 'swiss_roll'.
Images are resized / cropped per ``config.data.dataset`` as the official pipeline does (see
:mod:`score_sde_jax.data.images`).

Batching: the global batch (``config.training.batch_size``, or ``config.eval.batch_size`` when
``evaluation``) is split evenly over processes; ``shard=(process_index, process_count)`` picks
this process's part. Training-style iterators (``evaluation=False``) repeat forever: every epoch
is a fresh permutation (the same on every process, seeded by ``config.seed``) of which process i
takes positions i, i + P, ...; random horizontal flips are applied when ``data.random_flip``.
Evaluation iterators make one ordered pass (process i takes examples i, i + P, ...), without
flips; ``len()`` gives their number of batches. Toy data are fresh samples at every training
step, and a fixed set of ``data.toy_eval_size`` (10 000) points for evaluation.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

from score_sde_jax.data import images as img
from score_sde_jax.data.tfds import DatasetNotPreparedError, tfds_source  # noqa: F401
from score_sde_jax.data.toy import get_toy_sampler

Batch = dict[str, np.ndarray]

SOURCES = ("tfds", "npz", "folder", "digits", "toy")


def get_data_scaler(config) -> Callable:
    """Data in [0, 1] -> model space: ``2x - 1`` when ``config.data.centered``, else identity."""
    if config.data.centered:
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config) -> Callable:
    """Model space -> [0, 1]: ``(x + 1) / 2`` when ``config.data.centered``, else identity."""
    if config.data.centered:
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x


class BatchIterator:
    """Iterator over batches; ``len()`` is defined for one-pass (evaluation) iterators.

    With ``prefetch > 0`` a background thread prepares that many batches ahead.
    """

    def __init__(self, batches: Iterator[Batch], num_batches: int | None, prefetch: int = 0):
        self.num_batches = num_batches
        self._batches = batches if prefetch <= 0 else Prefetch(batches, prefetch)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        return next(self._batches)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a training iterator repeats forever and has no length")
        return self.num_batches


class Prefetch:
    """An iterator that runs ``items`` in one background thread, ``depth`` items ahead; an
    exception there is re-raised by ``next``. ``close()`` stops the thread (it may be blocked
    in ``items`` until its next item is made)."""

    _DONE = object()

    def __init__(self, items: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, re-raised there
            self._put(e)

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._DONE:
            self._queue.put(item)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _local_batch_size(config, evaluation: bool, process_count: int) -> int:
    key = "eval.batch_size" if evaluation else "training.batch_size"
    size = config.eval.batch_size if evaluation else config.training.batch_size
    if size <= 0 or size % process_count:
        raise ValueError(f"config.{key}={size} must be a positive multiple of the number of "
                         f"processes ({process_count})")
    return size // process_count


def get_source(config, split: str):
    """The random-access image source of ``config.data.source`` for 'train' or 'test'."""
    data = config.data
    source = data.get("source", "tfds")
    missing = [key for key in ("image_size", "num_channels") if key not in data]
    if missing and source in SOURCES and source != "toy":
        raise ValueError(f"config.data.source={source!r} reads images, but this config has no "
                         f"config.data.{' / config.data.'.join(missing)} (a toy config? its data "
                         "are points drawn by data.source='toy')")
    size, channels = data.image_size, data.num_channels
    resize = img.get_resize_op(str(data.dataset), size)
    if source == "tfds":
        return tfds_source(config, split, resize)
    if source == "npz":
        return img.npz_source(data.get("path", ""), resize, size, channels)
    if source == "folder":
        return img.folder_source(data.get("path", ""), resize, channels, size,
                                 bool(data.get("skip_bad_files", False)))
    if source == "digits":
        return img.digits_source(split, img.get_resize_op("DIGITS", size), size, channels)
    raise ValueError(f"config.data.source={source!r} is not one of {SOURCES}")


def _augment(images: np.ndarray, rng: np.random.Generator, flip: bool,
             dequantize: bool) -> np.ndarray:
    """Random horizontal flips (each image with probability 1/2), then (255 x + U[0, 1)) / 256."""
    if flip:
        flipped = rng.random(len(images)) < 0.5
        images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    if dequantize:
        images = (255.0 * images + rng.random(images.shape, dtype=np.float32)) / 256.0
    return images.astype(np.float32)


def _epoch_stream(n: int, seed: tuple[int, ...], shard: tuple[int, int]) -> Iterator[int]:
    """Endless example indices: per epoch a shared permutation, of which this shard's part."""
    epoch = 0
    while True:
        yield from np.random.default_rng((*seed, epoch)).permutation(n)[shard[0]::shard[1]]
        epoch += 1


def _take(stream: Iterator[int], k: int) -> np.ndarray:
    return np.fromiter(stream, np.int64, count=k)


def _one_pass_batches(n: int, batch_size: int, shard: tuple[int, int],
                      drop_remainder: bool) -> list[np.ndarray]:
    mine = np.arange(n)[shard[0]::shard[1]]
    if drop_remainder:  # the same number of full batches on every process
        count = (n // shard[1]) // batch_size
    else:
        count = -(-len(mine) // batch_size)
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(count)]


def get_dataset(config, split: str = "train", evaluation: bool = False,
                shard: tuple[int, int] | None = None, uniform_dequantization: bool | None = None,
                drop_remainder: bool = True, prefetch: int | None = None,
                seed: int | None = None, start: int = 0) -> BatchIterator:
    """Batches of ``config``'s dataset for this process (see the module docstring).

    Args:
      split: 'train' or 'test' (the official evaluation split: 'test' for CIFAR-10 / SVHN /
        MNIST, 'validation' for CelebA / LSUN).
      evaluation: one ordered pass of ``config.eval.batch_size`` batches, no flips.
      shard: (process_index, process_count); default ``(jax.process_index(),
        jax.process_count())``.
      uniform_dequantization: default ``config.data.uniform_dequantization``.
      drop_remainder: one-pass iterators drop the last partial batch (the same number of
        batches on every process); with False the shards together cover the split exactly.
      prefetch: batches prepared ahead in a thread (default ``config.data.prefetch`` or 2).
      seed: default ``config.seed``; seeds the shuffling and the flip / dequantization noise, so
        pass a different one for each repeat of a dequantized (bits/dim) evaluation pass.
      start: training-style iterators begin with batch ``start`` of the stream, as if that many
        batches had been drawn, without loading their examples (resuming training mid-stream).
    Returns:
      An iterator of ``{'image': (B, H, W, C) or (B, D) float32, 'label': (B,) int32}``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
    if not 0 <= index < count:
        raise ValueError(f"shard={shard} must be (process_index, process_count) with "
                         "0 <= process_index < process_count")
    batch_size = _local_batch_size(config, evaluation, count)
    data = config.data
    seed = int(config.get("seed", 0) if seed is None else seed)
    split_id = 0 if split == "train" else 1
    rng = np.random.default_rng((seed, split_id, index, int(evaluation)))  # this process's noise
    prefetch = int(data.get("prefetch", 2)) if prefetch is None else prefetch

    if data.get("source", "tfds") == "toy":
        sampler = get_toy_sampler(data)
        dim = sampler(np.random.default_rng(0), 1)[0].shape[1]
        if dim != data.get("dim", dim):
            raise ValueError(f"config.data.dim={data.dim} but the toy distribution has "
                             f"dimension {dim}")
        if not evaluation:
            for _ in range(start):
                sampler(rng, batch_size)

            def fresh() -> Iterator[Batch]:
                while True:
                    x, y = sampler(rng, batch_size)
                    yield {"image": x, "label": y}
            return BatchIterator(fresh(), None, prefetch)
        x, y = sampler(np.random.default_rng((seed, split_id, 1000)),
                       int(data.get("toy_eval_size", 10_000)))
        source = img.ArraySource(x, y)
        flip = dequantize = False
    else:
        source = get_source(config, split)
        flip = bool(data.random_flip) and not evaluation
        dequantize = (bool(data.get("uniform_dequantization", False))
                      if uniform_dequantization is None else uniform_dequantization)

    def make(indices: np.ndarray) -> Batch:
        images, labels = source.get_batch(indices)
        if images.ndim == 4:
            images = _augment(images, rng, flip, dequantize)
        return {"image": images, "label": labels}

    if evaluation:
        plan = _one_pass_batches(len(source), batch_size, (index, count), drop_remainder)
        return BatchIterator((make(ix) for ix in plan), len(plan), prefetch)
    if len(source) < count:
        raise ValueError(f"{len(source)} examples cannot be shared by {count} processes")
    stream = _epoch_stream(len(source), (seed, split_id), (index, count))
    if start:  # the indices and the noise draws of the skipped batches, without their images
        _take(stream, start * batch_size)
        if flip or dequantize:
            shape = (batch_size, *source.get_batch(np.zeros(1, np.int64))[0].shape[1:])
            for _ in range(start if len(shape) == 4 else 0):  # as _augment draws them
                if flip:
                    rng.random(batch_size)
                if dequantize:
                    rng.random(shape, dtype=np.float32)
    batches = (make(_take(stream, batch_size)) for _ in itertools.count())
    return BatchIterator(batches, None, prefetch)


def check_data(config) -> None:
    """Read one training batch of each split of ``config``'s data: a missing or malformed
    ``data.path``, an unprepared tfds dataset or a batch size that does not fit the processes
    fails here with its error (a run calls this before it creates any file)."""
    for split in ("train", "test"):
        next(get_dataset(config, split, evaluation=False, prefetch=0))



# ----------------------------------------------------------------------------- the training stream
def segment_length(config) -> int:
    """Steps between restarts of the training data stream."""
    return math.gcd(int(config.training.snapshot_freq),
                    int(config.training.snapshot_freq_for_preemption))


def segment_seed(config, segment: int, salt: int = 0x5DE) -> int:
    """The data seed of a segment: a hash of (config.seed, salt, segment)."""
    return int(np.random.SeedSequence([int(config.seed), salt, segment]).generate_state(1)[0])


def _restarted_stream(config, split: str, first: int, length: int, salt: int) -> Iterator[Batch]:
    """Items first, first + 1, ... of a stream of ``split`` batches restarted every ``length``
    items with the seed of the segment: item i is a function of (config, i) only."""
    index = first
    while True:
        segment = index // length
        it = get_dataset(config, split, evaluation=False, prefetch=0,
                         seed=segment_seed(config, segment, salt), start=index - segment * length)
        for _ in range((segment + 1) * length - index):
            yield next(it)
        index = (segment + 1) * length


def local_batches(config, start: int) -> Iterator[Batch]:
    """This process's training batches for the updates start, start + 1, ...: item s (the
    batch of the update that turns step s into s + 1) is a deterministic function of (config,
    s), from a stream restarted every :func:`segment_length` steps with :func:`segment_seed`, so
    a run resumed at any step sees the batches of an uninterrupted one."""
    return _restarted_stream(config, "train", start, segment_length(config), 0x5DE)


def eval_batches(config, start: int) -> Iterator[Batch]:
    """This process's test batches for the evaluations after step ``start`` (the e-th
    evaluation, at step e * eval_freq, takes item e - 1 whatever step training resumed at)."""
    freq = int(config.training.eval_freq)
    return _restarted_stream(config, "test", start // freq,
                             max(1, segment_length(config) // freq), 0xE7A)
