"""The input pipeline: every source, resizing, sharding, dequantization, flips, clear errors."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from score_sde_jax import datasets
from score_sde_jax.data import images as img
from score_sde_jax.data import toy


def make_config(source="npz", dataset="CIFAR10", image_size=4, num_channels=1, batch_size=4,
                eval_batch_size=4, **data):
    config = ml_collections.ConfigDict({
        "seed": 42,
        "training": {"batch_size": batch_size},
        "eval": {"batch_size": eval_batch_size},
        "data": {"dataset": dataset, "source": source, "image_size": image_size,
                 "num_channels": num_channels, "centered": False, "random_flip": False,
                 "uniform_dequantization": False, "path": "", "tfds_name": "", "prefetch": 0},
    })
    config.data.update(data)
    return config


def index_npz(tmp_path, n=10, size=4, channels=1):
    """Images whose every pixel is their index (uint8), labels = 100 + index."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, size, size, channels)).copy()
    path = tmp_path / "data.npz"
    np.savez(path, image=images, label=100 + np.arange(n))
    return str(path)


def indices_of(batch):
    return np.round(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


# ------------------------------------------------------------------------------ scalers


@pytest.mark.parametrize("centered", [True, False])
def test_scaler_round_trip(centered):
    config = make_config(centered=centered)
    x = np.linspace(0, 1, 11)
    scaled = datasets.get_data_scaler(config)(x)
    np.testing.assert_allclose(scaled, 2 * x - 1 if centered else x)
    np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(scaled), x, atol=1e-15)


# ------------------------------------------------------------------------------ tfds


def test_tfds_cifar10_matches_the_records():
    config = make_config("tfds", "CIFAR10", image_size=32, num_channels=3, eval_batch_size=5)
    with tfds.testing.mock_data(num_examples=12):
        records = tfds.data_source("cifar10", split="test")
        expected = np.stack([records[i]["image"] for i in range(12)]) / 255.0
        labels = [int(records[i]["label"]) for i in range(12)]
        batches = list(datasets.get_dataset(config, "test", evaluation=True,
                                            drop_remainder=False))
        train = next(datasets.get_dataset(config, "train"))
    assert [b["image"].shape[0] for b in batches] == [5, 5, 2]
    np.testing.assert_allclose(np.concatenate([b["image"] for b in batches]), expected, atol=1e-7)
    assert np.concatenate([b["label"] for b in batches]).tolist() == labels
    assert train["image"].shape == (4, 32, 32, 3) and train["image"].dtype == np.float32
    assert train["label"].dtype == np.int32


def test_tfds_mnist_is_padded_to_32_with_one_channel():
    config = make_config("tfds", "MNIST", image_size=32, num_channels=1, eval_batch_size=3)
    with tfds.testing.mock_data(num_examples=3):
        raw = np.stack([tfds.data_source("mnist", split="test")[i]["image"] for i in range(3)])
        batch = next(datasets.get_dataset(config, "test", evaluation=True))
    assert batch["image"].shape == (3, 32, 32, 1)
    np.testing.assert_allclose(batch["image"][:, 2:30, 2:30], raw / 255.0, atol=1e-7)
    assert batch["image"][:, :2].max() == 0 and batch["image"][:, 30:].max() == 0


@pytest.mark.parametrize("dataset, size", [("CELEBA", 64), ("LSUN", 128), ("LSUN", 32),
                                           ("SVHN", 16)])
def test_tfds_official_datasets_give_square_images(dataset, size):
    config = make_config("tfds", dataset, image_size=size, num_channels=3, category="bedroom")
    with tfds.testing.mock_data(num_examples=4):
        batch = next(datasets.get_dataset(config, "train"))
    assert batch["image"].shape == (4, size, size, 3)
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1


class ScoreSdeTestImages(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) tfds dataset: image i is filled with 20 i, label i % 3.

    It can be prepared without TensorFlow because its images are handed over as PIL images.
    """

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(6, 6, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(7)),
                "test": self._generate_examples(range(7, 12))}

    def _generate_examples(self, indices):
        for i in indices:
            yield i, {"image": Image.fromarray(np.full((6, 6, 3), 20 * i, np.uint8)),
                      "label": i % 3}


def test_tfds_reads_a_prepared_array_record_dataset(tmp_path):
    ScoreSdeTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    config = make_config("tfds", "TINY", image_size=6, num_channels=3, eval_batch_size=2,
                         tfds_name="score_sde_test_images", data_dir=str(tmp_path))
    batches = list(datasets.get_dataset(config, "test", evaluation=True, drop_remainder=False))
    index = np.concatenate([np.round(b["image"][:, 0, 0, 0] * 255 / 20) for b in batches])
    assert sorted(index.tolist()) == list(range(7, 12))
    assert np.concatenate([b["label"] for b in batches]).tolist() == [i % 3 for i in index]
    train = next(datasets.get_dataset(config, "train"))
    assert set(np.round(train["image"][:, 0, 0, 0] * 255 / 20).tolist()) <= set(range(7))


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
    config = make_config("tfds", "CIFAR10", image_size=32, num_channels=3,
                         data_dir=str(tmp_path / "tfds"))
    with pytest.raises(datasets.DatasetNotPreparedError) as err:
        datasets.get_dataset(config, "train")
    message = str(err.value)
    assert "tfds build cifar10" in message and "--file_format=array_record" in message
    assert str(tmp_path / "tfds") in message and "config.data.data_dir" in message


# ------------------------------------------------------------------------------ resizing


def test_official_resize_rules():
    rng = np.random.default_rng(0)
    celeb = np.ones((218, 178, 3), np.uint8) * 255
    celeb[39:179, 19:159] = 0  # everything outside the central 140x140 crop is white
    assert img.get_resize_op("CELEBA", 35)(celeb).max() == 0
    square = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for dataset in ("CIFAR10", "LSUN", "FFHQ"):
        np.testing.assert_allclose(img.get_resize_op(dataset, 8)(square), square / 255.0,
                                   atol=1e-7)
    wide = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lsun = img.get_resize_op("LSUN", 16)(wide)  # crop 20x20, bicubic, truncated to uint8
    assert lsun.shape == (16, 16, 3)
    np.testing.assert_allclose(lsun * 255, np.round(lsun * 255), atol=1e-4)
    assert img.get_resize_op("LSUN", 128)(np.zeros((100, 150, 3), np.uint8)).shape == (128, 128, 3)
    assert img.get_resize_op("MNIST", 20)(np.zeros((28, 28, 1), np.uint8)).shape == (20, 20, 1)


# ------------------------------------------------------------------------------ npz / folder


def test_sharded_evaluation_passes_partition_the_split(tmp_path):
    config = make_config(path=index_npz(tmp_path, n=11), eval_batch_size=4)
    seen = []
    for index in range(2):
        passes = list(datasets.get_dataset(config, "test", evaluation=True, shard=(index, 2),
                                           drop_remainder=False))
        seen += [i for b in passes for i in indices_of(b)]
        assert all(b["label"].tolist() == [100 + i for i in indices_of(b)] for b in passes)
    assert sorted(seen) == list(range(11))
    kept = [len(datasets.get_dataset(config, "test", evaluation=True, shard=(i, 2)))
            for i in range(2)]
    assert kept == [2, 2]  # 11 // 2 = 5 examples per process -> 2 full batches of 2 on each


def test_sharded_training_streams_cover_each_epoch(tmp_path):
    config = make_config(path=index_npz(tmp_path, n=10), batch_size=2)
    streams = [datasets.get_dataset(config, "train", shard=(i, 2)) for i in range(2)]
    epochs = [[i for s in streams for _ in range(5) for i in indices_of(next(s))]
              for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]  # reshuffled
    again = datasets.get_dataset(config, "train", shard=(0, 2))
    assert indices_of(next(again)) == epochs[0][:1]  # deterministic from config.seed
    with pytest.raises(TypeError, match="no length"):
        len(again)


def test_batch_size_must_divide_among_processes(tmp_path):
    config = make_config(path=index_npz(tmp_path), batch_size=3, eval_batch_size=5)
    with pytest.raises(ValueError, match=r"config\.training\.batch_size=3"):
        datasets.get_dataset(config, "train", shard=(0, 2))
    with pytest.raises(ValueError, match=r"config\.eval\.batch_size=5"):
        datasets.get_dataset(config, "test", evaluation=True, shard=(1, 2))


def test_uniform_dequantization(tmp_path):
    config = make_config(path=index_npz(tmp_path, n=8), batch_size=8,
                         uniform_dequantization=True)
    values = next(datasets.get_dataset(config, "train"))["image"] * 256  # = v + u, v the pixel
    bins = np.floor(values)
    assert sorted(bins[:, 0, 0, 0].tolist()) == list(range(8))  # one epoch: every image once
    np.testing.assert_array_equal(bins, np.broadcast_to(bins[:, :1, :1], bins.shape))
    noise = values - bins  # fresh U[0, 1) per pixel
    assert np.unique(noise).size == noise.size and 0.4 < noise.mean() < 0.6
    ev = [next(datasets.get_dataset(config, "test", evaluation=True, seed=s,
                                    uniform_dequantization=True))["image"] for s in (0, 0, 1)]
    np.testing.assert_array_equal(np.floor(ev[0] * 256), np.floor(ev[2] * 256))
    assert np.array_equal(ev[0], ev[1]) and not np.array_equal(ev[0], ev[2])  # noise per seed
    plain = next(datasets.get_dataset(config, "train", uniform_dequantization=False))
    np.testing.assert_allclose(plain["image"] * 255, np.round(plain["image"] * 255), atol=1e-5)


def test_random_flip_only_when_training(tmp_path):
    images = np.tile(np.arange(4, dtype=np.uint8)[None, None, :, None] * 60, (6, 4, 1, 3))
    path = tmp_path / "ramp.npz"
    np.savez(path, image=images)
    config = make_config(path=str(path), num_channels=3, batch_size=6, random_flip=True)
    it = datasets.get_dataset(config, "train")
    rows = np.concatenate([next(it)["image"][:, 0, :, 0] for _ in range(10)]) * 255
    forward, backward = np.arange(4) * 60, np.arange(4)[::-1] * 60
    is_forward = np.all(np.isclose(rows, forward), axis=1)
    assert np.all(is_forward | np.all(np.isclose(rows, backward), axis=1))
    assert 10 < is_forward.sum() < 50
    ev = next(datasets.get_dataset(config, "test", evaluation=True))["image"][:, 0, :, 0] * 255
    np.testing.assert_allclose(ev, np.broadcast_to(forward, (4, 4)), atol=1e-4)


def test_npz_errors(tmp_path):
    config = make_config(path=str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match="config.data.path"):
        datasets.get_dataset(config)
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(KeyError, match="no 'image' array"):
        datasets.get_dataset(make_config(path=str(tmp_path / "x.npz")))
    np.savez(tmp_path / "rgb.npz", image=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="config.data.num_channels is 1"):
        datasets.get_dataset(make_config(path=str(tmp_path / "rgb.npz")))
    with pytest.raises(ValueError, match="config.data.source='hdf5'"):
        datasets.get_dataset(make_config(source="hdf5"))
    with pytest.raises(ValueError, match="split must be"):
        datasets.get_dataset(make_config(), split="validation")


def test_folder_source_with_class_folders(tmp_path):
    rng = np.random.default_rng(1)
    pictures = {}
    for cls in ("dog", "cat"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            pictures[(cls, k)] = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(pictures[(cls, k)]).save(tmp_path / cls / f"{k}.png")
    wide = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "dog" / "w.jpg")
    config = make_config("folder", "FFHQ", image_size=6, num_channels=3, path=str(tmp_path))
    batches = list(datasets.get_dataset(config, "test", evaluation=True, drop_remainder=False))
    images = np.concatenate([b["image"] for b in batches])
    assert np.concatenate([b["label"] for b in batches]).tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_allclose(images[0], pictures[("cat", 0)] / 255.0, atol=1e-7)
    np.testing.assert_allclose(images[3], pictures[("dog", 1)] / 255.0, atol=1e-7)
    assert images[4].shape == (6, 6, 3)  # 9x12 JPEG: centre-cropped and resized
    Image.fromarray(pictures[("cat", 0)]).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="mixes images with class folders"):
        datasets.get_dataset(config)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        datasets.get_dataset(make_config("folder", path=str(tmp_path / "nope")))


# ------------------------------------------------------------------------------ digits / toy


def test_digits_source():
    config = make_config("digits", "DIGITS", image_size=8, eval_batch_size=50)
    passes = list(datasets.get_dataset(config, "test", evaluation=True, drop_remainder=False))
    digits = load_digits()
    images = np.concatenate([b["image"] for b in passes])
    np.testing.assert_allclose(images[..., 0], digits.images[1500:] / 16.0, atol=1e-7)
    assert np.concatenate([b["label"] for b in passes]).tolist() == digits.target[1500:].tolist()
    config = make_config("digits", "DIGITS", image_size=16, batch_size=8)
    batch = next(datasets.get_dataset(config, "train"))
    assert batch["image"].shape == (8, 16, 16, 1)
    assert 0 <= batch["image"].min() and 0.9 < batch["image"].max() <= 1


def test_toy_gmm_samples_follow_the_mixture():
    config = make_config("toy", "GMM", batch_size=1000, dim=2)
    it = datasets.get_dataset(config, "train")
    batches = [next(it) for _ in range(10)]
    x = np.concatenate([b["image"] for b in batches])
    k = np.concatenate([b["label"] for b in batches])
    assert x.shape == (10_000, 2) and x.dtype == np.float32
    weights, means = toy.DEFAULT_GMM["gmm_weights"], np.array(toy.DEFAULT_GMM["gmm_means"])
    np.testing.assert_allclose(np.bincount(k) / len(k), weights, atol=0.02)
    for j in range(3):
        np.testing.assert_allclose(x[k == j].mean(0), means[j], atol=0.03)
        np.testing.assert_allclose(x[k == j].std(0), 0.3, atol=0.02)
    custom = make_config("toy", "TOY", toy="gmm", gmm_weights=(1.0,), gmm_means=((5.0, 5.0),),
                         gmm_stds=(0.1,), batch_size=500)
    assert abs(next(datasets.get_dataset(custom))["image"].mean() - 5.0) < 0.02


def test_toy_shapes_and_evaluation_set():
    for name in ("checkerboard", "two_moons", "swiss_roll"):
        config = make_config("toy", "TOY", toy=name, batch_size=256)
        x = next(datasets.get_dataset(config))["image"]
        assert x.shape == (256, 2) and np.all(np.isfinite(x))
        if name == "checkerboard":
            assert np.all(np.abs(x) <= 4)
            assert np.all((np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0)
    config = make_config("toy", "TOY", toy="two_moons", eval_batch_size=32, toy_eval_size=100)
    shards = [list(datasets.get_dataset(config, "test", evaluation=True, shard=(i, 2),
                                        drop_remainder=False)) for i in range(2)]
    points = np.concatenate([b["image"] for s in shards for b in s])
    full = np.concatenate([b["image"] for b in datasets.get_dataset(
        config, "test", evaluation=True, drop_remainder=False)])
    assert len(full) == 100
    np.testing.assert_array_equal(np.sort(points, axis=0), np.sort(full, axis=0))
    with pytest.raises(ValueError, match="not a toy distribution"):
        datasets.get_dataset(make_config("toy", "TOY", toy="spiral"))
    with pytest.raises(ValueError, match="config.data.dim=3"):
        datasets.get_dataset(make_config("toy", "GMM", dim=3))


def test_prefetch_thread_keeps_order_and_errors(tmp_path):
    config = make_config(path=index_npz(tmp_path, n=10), batch_size=2)
    plain = datasets.get_dataset(config, prefetch=0)
    ahead = datasets.get_dataset(config, prefetch=3)
    for _ in range(12):
        assert indices_of(next(plain)) == indices_of(next(ahead))

    def broken():
        yield {"image": np.zeros(1)}
        raise RuntimeError("bad record")

    it = datasets.BatchIterator(broken(), None, prefetch=2)
    next(it)
    with pytest.raises(RuntimeError, match="bad record"):
        next(it)
