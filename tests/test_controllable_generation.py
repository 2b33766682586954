"""Inpainting and colorization (SPEC §6) against exact conditionals of Gaussian mixtures, and the
command-line functions of ``main.py --mode sample``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from training_helpers import normal, uniform

from score_sde_jax import analytic, sde_lib
from score_sde_jax import controllable_generation as cg

N = 3000
SDES = {
    "ve": (lambda: sde_lib.VESDE(N=500), 1e-5),
    "vp": (lambda: sde_lib.VPSDE(N=500), 1e-3),
}
GMM2 = analytic.default_mixture()  # component 0: mean (-4, -2), covariance [[1, .4], [.4, .5]]


def _mixture4():
    """A 4-D mixture with full covariances whose components differ in coordinates 0 and 2."""
    rng = np.random.default_rng(1)
    covs = []
    for _ in range(3):
        a = rng.normal(size=(4, 4)) * 0.5
        covs.append(a @ a.T + 0.2 * np.eye(4))
    means = [[-5.0, 0.0, -5.0, 1.0], [5.0, 2.0, 0.0, -1.0], [0.0, -2.0, 6.0, 0.0]]
    return analytic.GaussianMixture([0.3, 0.3, 0.4], means, covs)


GMM4 = _mixture4()


PROJ = np.random.default_rng(11).normal(size=(4, 256))


def _w2(x, y):
    """Sliced W₂ (256 fixed directions) of (n, d) samples; the exact 1-D W₂ when d = 1."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    theta = np.ones((1, 1)) if x.shape[1] == 1 else PROJ[:x.shape[1]] / np.linalg.norm(
        PROJ[:x.shape[1]], axis=0)
    return float(np.sqrt(np.mean((np.sort(x @ theta, 0) - np.sort(y @ theta, 0)) ** 2)))


def _sample(mix, n, seed):
    """n exact samples of a GaussianMixture, drawn with NumPy (no compilation)."""
    rng = np.random.default_rng(seed)
    w, mu, cov = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.covs))
    k = rng.choice(len(w), size=n, p=w / w.sum())
    z = rng.standard_normal((n, mu.shape[1]))
    return mu[k] + np.einsum("nij,nj->ni", np.linalg.cholesky(cov)[k], z)


def _noise(sample, ref):
    """mean + 3 sd of the distance of 12 fresh exact samples to ``ref``: exact-vs-exact noise."""
    d = [_w2(sample(100 + i), ref) for i in range(12)]
    return float(np.mean(d) + 3 * np.std(d))


@functools.lru_cache
def _case(dim):
    """(mixture, known vector, mask, exact conditional samples, noise threshold)."""
    if dim == 2:
        gmm, known, mask = GMM2, np.array([-4.5, 0.0]), np.array([1.0, 0.0])
    else:
        gmm, known, mask = GMM4, np.array([4.0, 0.0, 0.5, 0.0]), np.array([1.0, 0.0, 1.0, 0.0])
    cond = gmm.conditional(known, mask)
    ref = _sample(cond, N, 1)
    return gmm, known, mask, ref, _noise(lambda seed: _sample(cond, N, seed), ref)


# Langevin steps per noise level (N = 500 levels). Pooled over 12000 samples, the conditional mean
# is off by 1.6-3.3 standard errors (2-3% of a standard deviation) in 2-D with the paper's one
# step, and by up to 10% of a standard deviation in 4-D VP (two unknowns strongly correlated with
# the known entries); with three steps every case is within 2 standard errors.
N_STEPS = 3


@functools.lru_cache
def _compiled(sde_name, dim, kw):
    """jit(rng, mixture arrays, data, mask) -> inpainted, one compilation per configuration."""
    make, eps = SDES[sde_name]
    sde = make()
    inpainter = cg.get_pc_inpainter(sde, (N, dim), eps=eps, **dict(kw))

    def run(rng, weights, means, covs, data, mask):
        score = analytic.GaussianMixture(weights, means, covs).score_fn(sde)
        return inpainter(rng, score, data, mask)

    return jax.jit(run)


def _inpaint(gmm, known, mask, sde_name, score_gmm=None, **kw):
    mix = score_gmm or gmm
    data = jnp.tile(jnp.asarray(known, jnp.float32), (N, 1))
    m = jnp.tile(jnp.asarray(mask, jnp.float32), (N, 1))
    run = _compiled(sde_name, gmm.dim, tuple(sorted(kw.items())))
    x = run(jax.random.PRNGKey(0), mix.weights, mix.means, mix.covs, data, m)
    assert bool(jnp.all(x[:, mask == 1] == data[:, mask == 1])), "known entries must be the data"
    return x[:, mask == 0]


# --------------------------------------------------------------------------- inpainting, exact
@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("dim", [2, 4])
def test_inpainting_samples_the_exact_conditional(sde_name, dim):
    """PC inpainting (reverse diffusion + Langevin) with the exact score draws p(x_u | x_k = y)."""
    gmm, known, mask, ref, noise = _case(dim)
    x = _inpaint(gmm, known, mask, sde_name, n_steps=N_STEPS)
    assert _w2(x, ref) < noise, (_w2(x, ref), noise)


def test_inpainting_with_probability_flow_predictor():
    """The PF-ODE predictor inside the PC loop (+ Langevin corrector) is exact as well."""
    gmm, known, mask, ref, noise = _case(2)
    x = _inpaint(gmm, known, mask, "ve", predictor="euler_maruyama", probability_flow=True,
                 n_steps=N_STEPS)
    assert _w2(x, ref) < noise


def test_inpainting_negative_controls():
    """The test can fail: a score without the component's correlation is far outside the noise,
    and so is the official corrector (no ``hold_known``) with several steps per level, whose
    later steps condition on known entries that drifted away."""
    gmm, known, mask, ref, noise = _case(2)
    covs = np.array(gmm.covs)
    covs[0, 0, 1] = covs[0, 1, 0] = 0.0
    wrong = analytic.GaussianMixture(gmm.weights, gmm.means, covs)
    assert _w2(_inpaint(gmm, known, mask, "vp", score_gmm=wrong), ref) > 3 * noise
    gmm, known, mask, ref, noise = _case(4)
    assert _w2(_inpaint(gmm, known, mask, "ve", n_steps=6, hold_known=False), ref) > 2.5 * noise


def test_replacement_bias_when_known_entries_do_not_tell_modes_apart():
    """A limitation of the SPEC's replacement method, measured: at y = 3, p(x₁ | x₀ = y) puts 72%
    on the upper mode (component 1) and 28% on the lower (component 2); at the noise levels where
    the modes separate the noisy known entry no longer tells them apart, so the inpainter's
    weights move towards the prior ratio 0.3 : 0.2 (60%). Exact-score inpainting gives ~52%."""
    known, mask = np.array([3.0, 0.0]), np.array([1.0, 0.0])
    exact_upper = float(GMM2.conditional(known, mask).weights[1])
    x = _inpaint(GMM2, known, mask, "ve", n_steps=N_STEPS)  # corrector steps do not help
    upper = float(jnp.mean(x[:, 0] > 0))
    assert abs(exact_upper - 0.7232) < 1e-3
    assert upper < exact_upper - 0.1  # ≈ 20 binomial standard deviations below


# --------------------------------------------------------------------------- colorization
def test_color_transform_is_orthogonal_and_round_trips(x64):
    m = cg.COLOR_M
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-15)
    spec = np.array([[0.5774, -0.8165, 0], [0.5774, 0.4082, -0.7071], [0.5774, 0.4082, 0.7071]])
    np.testing.assert_allclose(m, spec, atol=1e-4)  # SPEC §6 gives M to 4 decimals
    x = normal(0, (2, 5, 5, 3), np.float64)
    np.testing.assert_allclose(cg.couple(cg.decouple(x)), x, rtol=0, atol=1e-14)
    np.testing.assert_allclose(cg.decouple(cg.couple(x)), x, rtol=0, atol=1e-14)
    gray = jnp.repeat(x[..., :1], 3, axis=-1)
    dec = cg.decouple(gray)
    np.testing.assert_allclose(dec[..., 0], np.sqrt(3.0) * x[..., 0], atol=1e-14)
    np.testing.assert_allclose(dec[..., 1:], 0.0, atol=1e-14)


def test_color_transform_round_trips_in_float32():
    x = uniform(1, (4, 8, 8, 3))
    assert float(jnp.max(jnp.abs(cg.couple(cg.decouple(x)) - x))) < 1e-6


def test_colorizer_keeps_the_gray_channel():
    sde = sde_lib.VESDE(sigma_max=5.0, N=50)
    shape = (3, 6, 6, 3)
    def score(x, t):
        return -(x - 0.5) / (0.1**2 + sde.marginal_prob(x, t)[1][:, None, None, None] ** 2)
    gray = uniform(2, (3, 6, 6, 1))
    colorizer = cg.get_pc_colorizer(sde, shape, eps=1e-5)
    x = jax.jit(lambda r, g: colorizer(r, score, g))(jax.random.PRNGKey(0), gray)
    assert x.shape == shape
    assert float(jnp.max(jnp.abs(x.mean(axis=-1, keepdims=True) - gray))) < 1e-6
    assert float(jnp.std(x - x.mean(axis=-1, keepdims=True))) > 1e-2  # it did add colour


def test_colorizer_samples_the_exact_conditional():
    """One-pixel RGB images from a 3-D mixture: the colorizer's colours given the grey level are
    distributed as the exact conditional (computed in the decoupled space x M)."""
    rng = np.random.default_rng(3)
    covs = [a @ a.T * 0.02 + 0.005 * np.eye(3) for a in rng.normal(size=(2, 3, 3))]
    gmm = analytic.GaussianMixture([0.6, 0.4], [[0.2, 0.3, 0.6], [0.8, 0.5, 0.3]], covs)
    m = jnp.asarray(cg.COLOR_M)
    dec = analytic.GaussianMixture(gmm.weights, gmm.means @ m, jnp.einsum("ji,kjl,lm->kim", m,
                                                                          gmm.covs, m))
    g = 0.3  # grey level: component 0 (mean grey 0.367) far more likely than 1 (0.533)
    known = jnp.array([np.sqrt(3.0) * g, 0.0, 0.0])
    cond = dec.conditional(known, np.array([1.0, 0.0, 0.0]))

    def exact(seed):
        u = _sample(cond, N, seed)
        return np.asarray(cg.couple(jnp.concatenate([jnp.full((N, 1), known[0]), u], axis=1)))

    ref = exact(1)
    noise = _noise(exact, ref)
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=2.0, N=500)
    flat_score = gmm.score_fn(sde)
    def score(x, t):
        return flat_score(x.reshape(-1, 3), t).reshape(x.shape)
    colorizer = cg.get_pc_colorizer(sde, (N, 1, 1, 3), eps=1e-5, n_steps=N_STEPS)
    gray = jnp.full((N, 1, 1, 1), g)
    x = jax.jit(lambda r: colorizer(r, score, gray))(jax.random.PRNGKey(0)).reshape(N, 3)
    assert _w2(x, ref) < noise, (_w2(x, ref), noise)


# --------------------------------------------------------------------------- errors
def test_shape_errors_name_the_shapes():
    sde = sde_lib.VPSDE(N=10)
    inpainter = cg.get_pc_inpainter(sde, (2, 8, 8, 3))
    def score(x, t):
        return -x
    good = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"data has shape \(2, 8, 8, 1\).*\(2, 8, 8, 3\)"):
        inpainter(jax.random.PRNGKey(0), score, jnp.zeros((2, 8, 8, 1)), good)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4, 4, 3\)"):
        inpainter(jax.random.PRNGKey(0), score, good, jnp.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        inpainter(jax.random.PRNGKey(0), score, good, good + 0.5)
    with pytest.raises(ValueError, match="RGB"):
        cg.get_pc_colorizer(sde, (2, 8, 8, 1))(jax.random.PRNGKey(0), score, jnp.zeros((2, 8, 8, 1)))
    colorizer = cg.get_pc_colorizer(sde, (2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"gray has shape \(2, 16, 16, 3\)"):
        colorizer(jax.random.PRNGKey(0), score, jnp.zeros((2, 16, 16, 1)))


# --------------------------------------------------------------------------- main.py's functions
def _workdir(tmp_path, config, name):
    from score_sde_jax import checkpoints, train_lib

    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    workdir = tmp_path / name
    ckpt = checkpoints.Checkpointer(checkpoints.step_dirs(workdir)[0])
    ckpt.save(state, config)
    ckpt.close()
    return workdir


def _image_config():
    """A tiny RGB 'image' model: the MLP score network on 4x4x3 images, 20 noise scales."""
    from configs.toy_gmm import get_config

    config = get_config()
    del config.data["dim"]
    config.data.image_size, config.data.num_channels, config.data.centered = 4, 3, True
    config.model.num_scales = 20
    config.model.nf = 16
    config.eval.batch_size = 8  # one sharded batch over the 8 test devices (5 images padded)
    return config


def test_cli_inpaint_and_colorize_write_pngs(tmp_path):
    from score_sde_jax import inference as cli

    config = _image_config()
    workdir = _workdir(tmp_path, config, "score")
    rgb = (np.random.default_rng(0).uniform(size=(5, 4, 4, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "images.npz", image=rgb)
    mask = np.zeros((4, 4), np.uint8)
    mask[:, :2] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = cli.inpaint(config, workdir, tmp_path / "images.npz", tmp_path / "mask.png", tmp_path / "o")
    saved = np.load(out["npz"])
    assert saved["samples_float"].shape == (5, 4, 4, 3) and out["png"].is_file()
    np.testing.assert_allclose(saved["samples_float"][:, :, :2], rgb[:, :, :2] / 255.0, atol=1e-6)

    Image.fromarray(rgb[0]).save(tmp_path / "one.png")
    out = cli.colorize(config, workdir, tmp_path / "one.png", tmp_path / "o")
    x = np.load(out["npz"])["samples_float"]
    assert x.shape == (1, 4, 4, 3) and out["png"].is_file()
    np.testing.assert_allclose(x.mean(-1), rgb[:1].mean(-1) / 255.0, atol=1e-5)


def test_cli_inputs_that_do_not_fit_the_model(tmp_path):
    from score_sde_jax import inference as cli

    config = _image_config()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png: shape \(1, 8, 8, 3\).*4x4 images.*image_size=4"):
        cli.common.load_images(tmp_path / "big.png", config)
    np.save(tmp_path / "two.npy", np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="2 channels"):
        cli.common.load_images(tmp_path / "two.npy", config)
    images = cli.common.load_images(tmp_path / "big.png", _with(config, image_size=8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "small_mask.png")
    with pytest.raises(ValueError, match=r"small_mask.png: shape \(1, 4, 4\).*8x8"):
        cli.common.load_mask(tmp_path / "small_mask.png", images.shape)
    np.save(tmp_path / "mask3.npy", np.ones((3, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"mask3.npy: shape \(3, 8, 8, 3\) does not match"):
        cli.common.load_mask(tmp_path / "mask3.npy", images.shape)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        cli.common.load_images(tmp_path / "missing.png", config)
    gray_config = _with(config, num_channels=1)
    with pytest.raises(ValueError, match="RGB"):
        cli.colorize(gray_config, tmp_path, tmp_path / "big.png", tmp_path / "o")


def _with(config, **data):
    config = config.copy_and_resolve_references()
    config.data.update(data)
    return config


def test_cli_inpaints_flat_points(tmp_path, monkeypatch):
    from configs.toy_gmm import get_config
    from score_sde_jax import inference as cli

    config = get_config()
    config.model.num_scales = 20
    workdir = _workdir(tmp_path, config, "gmm")
    np.savez(tmp_path / "pts.npz", x=np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32))
    np.save(tmp_path / "m.npy", np.array([1.0, 0.0]))
    out = cli.inpaint(config, workdir, tmp_path / "pts.npz", tmp_path / "m.npy", tmp_path / "o")
    x = np.load(out["npz"])["samples"]
    np.testing.assert_array_equal(x[:, 0], [1.0, -1.0])
    # the same inpainting on one device: the work is sharded, the samples are the same
    from score_sde_jax import sharding

    real_mesh = sharding.make_mesh
    monkeypatch.setattr(sharding, "make_mesh", lambda devices=None: real_mesh(jax.devices()[:1]))
    one = cli.inpaint(config, workdir, tmp_path / "pts.npz", tmp_path / "m.npy", tmp_path / "o1")
    np.testing.assert_allclose(np.load(one["npz"])["samples"], x, atol=1e-5)
    np.save(tmp_path / "m3.npy", np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"m3.npy: shape \(1, 3\) does not match the data \(2, 2\)"):
        cli.inpaint(config, workdir, tmp_path / "pts.npz", tmp_path / "m3.npy", tmp_path / "o")


def test_cli_sample_class(tmp_path):
    from configs.classifier import toy_gmm as toy_gmm_classifier
    from configs.toy_gmm import get_config
    from score_sde_jax import inference as cli

    config = get_config()
    config.model.num_scales = 20
    config.eval.batch_size = 8
    workdir = _workdir(tmp_path, config, "gmm")
    clf_workdir = _workdir(tmp_path, toy_gmm_classifier.get_config(), "clf")
    out = cli.sample_class(config, workdir, clf_workdir, 2, 1.5, tmp_path / "o", num_samples=8)
    saved = np.load(out["npz"])
    assert saved["samples"].shape == (8, 2) and np.all(np.isfinite(saved["samples"]))
    assert np.all(saved["labels"] == 2) and out["png"].is_file()
    with pytest.raises(ValueError, match=r"label 3 is not a class of the classifier \(0 .. 2\)"):
        cli.sample_class(config, workdir, clf_workdir, 3, 1.0, tmp_path / "o")
    ve = config.copy_and_resolve_references()
    ve.training.sde = "vesde"
    with pytest.raises(ValueError, match="classifier was trained for SDE"):
        cli.sample_class(ve, workdir, clf_workdir, 0, 1.0, tmp_path / "o")
