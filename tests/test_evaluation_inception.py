"""FID / IS / KID against direct float64 formulas; the Flax FID Inception against pytorch-fid."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg
from scipy.special import softmax

from score_sde_jax import files
from score_sde_jax.evaluation import inception as inc
from score_sde_jax.evaluation import metrics
from score_sde_jax.evaluation import statistics as st

REFERENCE = Path(__file__).parent / "data" / "fid_inception_reference.npz"


def _random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ------------------------------------------------------------------------------------ FID


def test_frechet_distance_matches_sqrtm_formula():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_diagonal_closed_form():
    # Commuting covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(9.0 + 1.0 + 1.0 + 0.0, abs=1e-12)
    assert metrics.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-12)


def test_fid_from_features_uses_unbiased_gaussian_fit():
    rng = np.random.default_rng(1)
    f1 = rng.standard_normal((200, 5))
    f2 = rng.standard_normal((150, 5)) @ np.diag([1, 2, 0.5, 1, 1]) + 0.3
    expected = metrics.frechet_distance(f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T))
    assert metrics.fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-12)
    assert metrics.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_low_rank_path_equals_the_full_formula():
    """Fewer samples than dimensions: the SVD shortcut equals the D x D formula."""
    rng = np.random.default_rng(2)
    f1 = rng.standard_normal((30, 64))
    f2 = rng.standard_normal((40, 64)) * 1.5 + 0.2
    expected = metrics.frechet_distance(f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T))
    assert metrics.fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-6)


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sigma2"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.fid_from_features(np.zeros((4, 2)), np.zeros((4, 3)))


# ------------------------------------------------------------------------------------ IS


def test_inception_score_of_confident_uniform_classes_is_num_classes():
    k, splits = 8, 10
    labels = np.tile(np.arange(k), 5 * splits)  # every split sees every class equally often
    logits = 60.0 * np.eye(k)[labels]
    assert metrics.inception_score(logits, splits=splits) == pytest.approx(k, rel=1e-6)
    assert metrics.inception_score(np.zeros((20, k)), splits=2) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_direct_formula():
    rng = np.random.default_rng(2)
    logits = 3 * rng.standard_normal((60, 7))
    scores = []
    for part in np.split(logits, 3):
        p = softmax(part, axis=1)
        py = p.mean(0)
        scores.append(np.exp(np.mean(np.sum(p * np.log(p / py), axis=1))))
    mean, std = metrics.inception_score(logits, splits=3, return_std=True)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)


# ------------------------------------------------------------------------------------ KID


def _mmd2_loops(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written out term by term."""
    d = x.shape[1]
    def k(a, b):
        return (a @ b / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_single_block_matches_unbiased_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((9, 4)) + 0.5
    assert metrics.kid(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-10)


def test_kid_blocks_follow_tfgan_split():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((11, 3)), rng.standard_normal((7, 3))
    # max(11, 7) / 5 -> 3 blocks; the last (n mod 3) blocks take one extra sample.
    ests = [_mmd2_loops(x[0:3], y[0:2]), _mmd2_loops(x[3:7], y[2:4]), _mmd2_loops(x[7:11], y[4:7])]
    mean, std = metrics.kid(x, y, max_block_size=5, return_std=True)
    assert mean == pytest.approx(np.mean(ests), rel=1e-10)
    assert std == pytest.approx(np.sqrt(np.var(ests, ddof=1) / 3), rel=1e-9)


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    same, same_std = metrics.kid(a, b, max_block_size=200, return_std=True)
    shifted = metrics.kid(a, b + 1.0, max_block_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 50 * abs(same) and shifted > 0.1


# ----------------------------------------------------------------------- Inception network


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def state_dict(reference):
    return inc.random_state_dict(int(reference["seed"]))


@pytest.fixture(scope="module")
def variables(state_dict):
    return inc.state_dict_to_variables(state_dict)


def test_parameter_count_matches_torchvision_inception_v3():
    # torchvision's inception_v3 without the aux head, 1000 classes: 23,834,568 parameters.
    shapes = inc.state_dict_shapes(num_classes=1000)
    trainable = [s for k, s in shapes.items() if "running_" not in k]
    assert sum(int(np.prod(s)) for s in trainable) == 23_834_568
    assert shapes["fc.weight"] == (1000, 2048)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)


def test_matches_pytorch_fid_on_random_weights(reference, variables):
    """pytorch-fid's network with the same weights (tests/data/make_fid_inception_reference.py).

    The 32x32 batch is up-sampled to 299; the 320x40 image is down- and up-sampled; a batch of
    3 at batch_size 2 exercises the padding of the last batch.
    """
    outputs = {}
    for name in ("small", "large"):
        images = reference[f"{name}_images"]
        outputs[name] = jax.device_get(inc.inception_apply(variables, images))
        assert outputs[name]["pool"].shape == (len(images), 2048)
        assert outputs[name]["logits"].shape == (len(images), 1008)
        for key in ("pool", "logits"):
            ref = reference[f"{name}_{key}"]
            np.testing.assert_allclose(outputs[name][key], ref, atol=2e-5 * np.abs(ref).max())
    again = jax.device_get(inc.inception_apply(variables, reference["small_images"]))
    np.testing.assert_array_equal(again["pool"], outputs["small"]["pool"])  # deterministic


def test_resize_is_torch_bilinear_without_antialias():
    def torch_bilinear_1d(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(np.floor(src))
            i1 = min(i0 + 1, n_in - 1)
            w[i, i0] += 1 - (src - i0)
            w[i, i1] += src - i0
        return w

    x = np.random.default_rng(6).uniform(size=(1, 9, 5, 1))
    got = jax.image.resize(jnp.asarray(x), (1, 4, 13, 1), "bilinear", antialias=False)
    expected = np.einsum("ah,bw,nhwc->nabc", torch_bilinear_1d(9, 4), torch_bilinear_1d(5, 13), x)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)


def test_input_range_handling():
    u8 = np.random.default_rng(7).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    as_float = inc.to_unit_range(jnp.asarray(u8.astype(np.float32) / 255.0))
    np.testing.assert_allclose(inc.to_unit_range(jnp.asarray(u8)), as_float, atol=1e-7)
    gray = inc.to_unit_range(jnp.asarray(u8[..., :1]))
    np.testing.assert_allclose(gray, np.repeat(u8[..., :1] / 255.0, 3, axis=-1), atol=1e-7)
    with pytest.raises(ValueError, match="images must be"):
        inc.to_unit_range(jnp.zeros((2, 5, 5, 4)))


def test_1000_class_weights_give_1000_logits():
    variables = inc.state_dict_to_variables(inc.random_state_dict(1, num_classes=1000))
    model = inc.FIDInceptionV3(num_classes=1000)
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((3, 64, 48, 1), jnp.uint8))
    assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1000)
    assert inc.num_classes_of(variables) == 1000


def test_state_dict_round_trip_and_npz_loading(tmp_path, state_dict, variables):
    back = inc.variables_to_state_dict(variables)
    assert sorted(back) == sorted(state_dict)
    for k in state_dict:
        np.testing.assert_array_equal(back[k], state_dict[k])
    path = tmp_path / "fid_inception.npz"
    np.savez(path, **state_dict, **{"Conv2d_1a_3x3.bn.num_batches_tracked": np.int64(0)})
    converted = tmp_path / "converted.npz"
    inc.main(["convert", str(path), str(converted)])
    loaded = inc.variables_to_state_dict(inc.load_inception_params(converted))
    assert sorted(loaded) == sorted(state_dict)
    assert all(np.array_equal(loaded[k], state_dict[k]) for k in state_dict)


def test_bad_state_dicts_are_named(state_dict):
    broken = dict(state_dict)
    del broken["Mixed_6b.branch7x7_2.conv.weight"]
    broken["Mixed_5b.branch1x1.bn.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        inc.state_dict_to_variables(broken)
    assert "missing Mixed_6b.branch7x7_2.conv.weight" in str(err.value)
    assert "Mixed_5b.branch1x1.bn.weight: shape (3,)" in str(err.value)
    with pytest.raises(ValueError, match="fc.weight"):
        inc.state_dict_to_variables({})


def test_missing_weights_say_where_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        inc.load_inception_params(tmp_path / "pt_inception.pth")
    assert inc.FID_WEIGHTS_URL in str(err.value) and "convert" in str(err.value)
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"not really")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as if torch were absent
    with pytest.raises(ImportError, match="needs torch"):
        inc.load_inception_params(pth)
    import ml_collections

    config = ml_collections.ConfigDict({"eval": {"inception_path": ""}})
    with pytest.raises(ValueError, match="config.eval.inception_path is not set"):
        inc.load_inception_from_config(config)


# ------------------------------------------------------------------------- statistics files


def test_statistics_files_and_metrics(tmp_path):
    rng = np.random.default_rng(8)
    stats = {"pool": rng.standard_normal((40, 6)).astype(np.float32),
             "logits": rng.standard_normal((40, 5)).astype(np.float32)}
    path = tmp_path / "ckpt_1" / "stats.npz"
    files.savez_atomic(path, **stats)
    loaded = st.load_statistics(path)
    for k in stats:
        np.testing.assert_array_equal(loaded[k], stats[k])
    official = tmp_path / "cifar10_stats.npz"
    np.savez(official, pool_3=stats["pool"])
    ref = st.load_statistics(official)
    assert list(ref) == ["pool"]
    ref["pool"] = ref["pool"] + 0.5
    got = st.metrics_from_statistics(stats, ref, is_splits=2, kid_block_size=20)
    assert got == {
        "inception_score": metrics.inception_score(stats["logits"], splits=2),
        "fid": metrics.fid_from_features(stats["pool"], ref["pool"]),
        "kid": metrics.kid(stats["pool"], ref["pool"], max_block_size=20),
    }
    with pytest.raises(KeyError, match="ref_stats lacks"):
        st.metrics_from_statistics(stats, {"logits": stats["logits"]})
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        st.load_statistics(tmp_path / "nowhere.npz")
