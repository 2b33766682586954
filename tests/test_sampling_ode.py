"""The probability-flow ODE as an encoder (paper §4.3): round trips and latent statistics with the
exact score of a Gaussian mixture, agreement with the likelihood's latent, interpolation paths,
the sampling temperature, and ``main.py --mode encode / interpolate`` on a trained digits model."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats
from training_helpers import ROOT, subprocess_env

from configs.toy_gmm import get_config as toy_config
from score_sde_jax import analytic, inference, likelihood, run_lib, sampling, sde_lib, sharding

GMM = analytic.default_mixture()
SDES = {"ve": sde_lib.VESDE, "vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE}


def _prior_std(sde) -> float:
    return float(sde.marginal_prob(jnp.zeros((1, 1)), jnp.full((1,), sde.T))[1][0])


def _moments_t(sde) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of the exact p_T of the mixture."""
    p = GMM.perturbed(sde, sde.T)
    w, mu, cov = (np.asarray(a, np.float64) for a in (p.weights, p.means, p.covs))
    mean = w @ mu
    second = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu, mu))
    return mean, second - np.outer(mean, mean)


# --------------------------------------------------------------------------- exact score
@pytest.mark.parametrize("name", list(SDES))
def test_decode_encode_round_trip_and_latents_distributed_as_the_prior(name, x64):
    n, eps = 2000, 1e-3
    sde = SDES[name]()
    score = GMM.score_fn(sde)
    encoder = sampling.get_ode_encoder(sde, (n, 2), rtol=1e-5, atol=1e-5, eps=eps)
    decoder = sampling.get_ode_sampler(sde, (n, 2), rtol=1e-5, atol=1e-5, eps=eps)

    @jax.jit
    def round_trip(x):
        z, nfe = encoder(score, x)
        return z, nfe, decoder(jax.random.PRNGKey(0), score, z=z)[0]

    x = GMM.sample(jax.random.PRNGKey(1), n)
    z, nfe, back = (np.asarray(a) for a in round_trip(x))
    assert float(np.sqrt(np.mean((back - np.asarray(x)) ** 2))) <= 1e-3
    assert nfe.shape == (n,) and nfe.min() > 0 and len(np.unique(nfe)) > 1  # one solve per sample

    # z ~ p_T, whose moments are the prior's (0, σ_T² I) to within a standard error of n samples
    sigma = _prior_std(sde)
    mean_t, cov_t = _moments_t(sde)
    cov_se = np.sqrt((1.0 + np.eye(2)) / n)  # sd of the sample covariance of N(0, I)
    assert np.all(np.abs(mean_t / sigma) < 1.0 / np.sqrt(n)), mean_t / sigma
    assert np.all(np.abs(cov_t / sigma**2 - np.eye(2)) < cov_se), cov_t / sigma**2
    u = z / sigma
    assert np.all(np.abs(u.mean(0)) < 4.0 / np.sqrt(n)), u.mean(0)
    assert np.all(np.abs(np.cov(u.T) - np.eye(2)) < 4.0 * cov_se), np.cov(u.T)
    # normality beyond two moments: Kolmogorov-Smirnov of the coordinates and of the radius²
    for column in u.T:
        assert stats.kstest(column, "norm").pvalue > 1e-3
    assert stats.kstest(np.sum(u**2, 1), "chi2", args=(2,)).pvalue > 1e-3


def test_encoding_is_the_likelihood_latent_and_independent_of_the_batch():
    sde, eps, n = sde_lib.VESDE(), 1e-3, 16
    score = GMM.score_fn(sde)
    encoder = sampling.get_ode_encoder(sde, (n, 2), eps=eps)
    encode = jax.jit(lambda x: encoder(score, x))
    x = GMM.sample(jax.random.PRNGKey(2), n)
    z, nfe = encode(x)
    lik = likelihood.get_likelihood_fn(sde, eps=eps)
    _, z_lik, _ = jax.jit(lambda x: lik(jax.random.PRNGKey(0), score, x))(x)
    sigma = _prior_std(sde)
    assert float(jnp.max(jnp.abs(z - z_lik))) / sigma < 2e-3
    # a sample's latent does not depend on the other samples of its batch
    others = GMM.sample(jax.random.PRNGKey(3), n).at[3].set(x[3])
    z_others, nfe_others = encode(others)
    np.testing.assert_allclose(z_others[3], z[3], rtol=1e-6, atol=1e-6 * sigma)
    assert int(nfe_others[3]) == int(nfe[3]) and not np.array_equal(nfe_others, nfe)
    with pytest.raises(ValueError, match=r"x has shape \(4, 2\), the encoder was built for shape \(16, 2\)"):
        encoder(score, x[:4])


# --------------------------------------------------------------------------- interpolation
def test_slerp_follows_the_great_circle_and_lerp_the_chord():
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=(2, 3, 4, 4))
    z1 *= np.linalg.norm(z0) / np.linalg.norm(z1)  # equal norms
    alphas = np.linspace(0.0, 1.0, 7)
    path = np.asarray(sampling.slerp(z0, z1, alphas))
    assert path.shape == (7, 3, 4, 4)
    np.testing.assert_allclose(path[0], z0, atol=1e-5)
    np.testing.assert_allclose(path[-1], z1, atol=1e-5)
    norms = np.linalg.norm(path.reshape(7, -1), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(z0), rtol=1e-5)  # on the sphere
    unit = path.reshape(7, -1) / norms[:, None]
    angles = np.arccos(np.clip(unit[:-1] @ unit[0], -1, 1))
    np.testing.assert_allclose(np.diff(angles), angles[1], rtol=1e-4)  # constant angular speed
    # orthogonal unit vectors: the midpoint is (z0 + z1) / √2
    e0, e1 = np.eye(2)
    np.testing.assert_allclose(sampling.slerp(e0, e1, [0.5])[0], [2**-0.5, 2**-0.5], atol=1e-6)
    lin = np.asarray(sampling.lerp(z0, z1, alphas))
    np.testing.assert_allclose(lin[3], (z0 + z1) / 2, atol=1e-6)
    # parallel latents: the arc degenerates to the chord
    np.testing.assert_allclose(sampling.slerp(z0, 2 * z0, alphas), sampling.lerp(z0, 2 * z0, alphas),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\)"):
        sampling.slerp(np.ones(2), np.ones(3), alphas)


# --------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("method", ["ode", "heun", "dpm_solver"])
def test_temperature_scales_the_prior_draw(method):
    """Data N(0, s² I): the PF-ODE is linear in x, so a sample from τ · z is τ times the sample
    from z (the same draw z: the same key)."""
    config = toy_config()
    config.sampling.method = method
    config.model.num_scales = 50
    sde, eps = sde_lib.get_sde(config)
    s = 0.7

    def score(x, t):
        m = sde.mean_coeff(t)
        var = m**2 * s**2 + sde.marginal_prob(x, t)[1] ** 2
        return -x / var[:, None]

    def draw(temperature):
        config.sampling.temperature = temperature
        return sampling.get_sampling_fn(config, sde, (64, 2), eps)(jax.random.PRNGKey(3), score)[0]

    plain, cool = jax.jit(lambda: (draw(1.0), draw(0.5)))()
    np.testing.assert_allclose(cool, 0.5 * plain, rtol=1e-3, atol=1e-4)


def test_temperature_errors():
    config = toy_config()
    config.sampling.temperature = 0.8
    sde, eps = sde_lib.get_sde(config)
    with pytest.raises(ValueError, match="temperature=0.8 scales the prior draw .* pc sampler"):
        sampling.get_sampling_fn(config, sde, (4, 2), eps)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        sampling.get_ode_sampler(sde, (4, 2), temperature=0.0)


# --------------------------------------------------------------------------- a trained digits model
# configs/digits.py with the notebook's fast network: an MLP on the 64 pixels
DIGITS_MLP = """from configs.digits import get_config as digits_config


def get_config():
    config = digits_config()
    config.model.name, config.model.nf, config.model.num_layers = 'mlp', 128, 2
    config.model.num_scales = 100
    t = config.training
    t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption = 200, 200, 200
    t.log_freq, t.eval_freq, t.snapshot_sampling = 100, 1000, False
    config.data.prefetch = 0
    config.eval.batch_size = 8  # a multiple of the 8 test devices (evaluation is sharded)
    # decode(encode(x)) - x is ~1000x the tolerance on this barely trained model (1e-5: 1-4%)
    config.sampling.rtol = config.sampling.atol = 1e-6
    return config
"""


def _digits_config(tmp):
    """Write DIGITS_MLP to ``tmp/digits_mlp.py`` and load it."""
    (tmp / "digits_mlp.py").write_text(DIGITS_MLP)
    spec = importlib.util.spec_from_file_location("digits_mlp", tmp / "digits_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _test_digits(tmp):
    """Five digits of the test split as PNG files in ``tmp/pngs`` and as ``tmp/digits.npz``."""
    from sklearn.datasets import load_digits

    digits = np.uint8(np.round(load_digits().images[1500:1505] * (255 / 16)))
    (tmp / "pngs").mkdir()
    for i, image in enumerate(digits):
        Image.fromarray(image).save(tmp / "pngs" / f"digit_{i}.png")
    np.savez(tmp / "digits.npz", images=digits)


def test_trained_digits_model_encodes_interpolates_and_samples_cooler(tmp_path):
    """One test, so the model is trained once (a module fixture would train once per worker)."""
    config, run = _digits_config(tmp_path), tmp_path / "run"
    run_lib.train(config, str(run), mesh=sharding.make_mesh(jax.devices()[:1]))
    _test_digits(tmp_path)
    pngs = tmp_path / "pngs"

    # main.py --mode encode on a folder, in a subprocess while this process interpolates
    args = [f"--config={tmp_path / 'digits_mlp.py'}", f"--workdir={run}", "--mode=encode",
            f"--images={pngs}", f"--sample_dir={tmp_path / 'encoded'}"]
    cli = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(XLA_FLAGS=""))

    out = inference.interpolate(config, run, f"{pngs / 'digit_0.png'},{pngs / 'digit_1.png'}", 6,
                                  tmp_path / "path")
    saved = np.load(out["npz"])
    x = saved["samples_float"]
    assert x.shape == (6, 8, 8, 1) and np.all(np.isfinite(x))
    assert saved["latents"].shape == (6, 8, 8, 1) and np.all(saved["roundtrip_rms"] < 5e-3)
    width, height = Image.open(out["png"]).size
    assert width - 2 == 6 * (height - 2)  # one strip of six square tiles (and their padding)
    norms = np.linalg.norm(saved["latents"].reshape(6, -1), axis=1)
    assert norms.min() > 0.9 * norms[[0, -1]].min()  # slerp keeps the latents' norm
    with pytest.raises(ValueError, match="exactly two images; .* holds 5"):
        inference.interpolate(config, run, str(tmp_path / "digits.npz"), 6, tmp_path)

    # --mode sample with the ODE sampler at temperature 0.8
    cool = config.copy_and_resolve_references()
    cool.sampling.method, cool.sampling.temperature = "ode", 0.8
    out = inference.sample(cool, str(run), 4, str(tmp_path / "samples"))
    x = np.load(out["npz"])["samples_float"]
    assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(x))

    stdout, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr[-3000:]
    reported = re.search(r"encoded 5 image\(s\) .* round-trip RMS error ([\d.e-]+) \(max ([\d.e-]+)", stderr)
    assert reported, stderr[-3000:]
    saved = np.load(tmp_path / "encoded" / "latents.npz")
    assert saved["latents"].shape == (5, 8, 8, 1) and saved["nfe"].shape == (5,)
    assert list(saved["names"]) == [str(pngs / f"digit_{i}.png") for i in range(5)]
    rms = saved["roundtrip_rms"]
    assert float(reported.group(2)) == pytest.approx(rms.max(), rel=1e-2)
    assert rms.max() < 5e-3, rms  # pixels in [0, 1]
    assert (tmp_path / "encoded" / "roundtrip.png").is_file() and "latents.npz" in stdout


def test_images_of_another_shape_are_an_error_naming_both(tmp_path):
    config = _digits_config(tmp_path)
    _test_digits(tmp_path)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png: shape \(1, 16, 16\) does not fit the model, which "
                                         r"takes 8x8 images with 1 channel\(s\)"):
        inference.encode(config, tmp_path / "run", str(tmp_path / "big.png"), tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb.png: shape \(1, 8, 8, 3\) does not fit the model, which "
                                         r"takes 8x8 images with 1 channel\(s\)"):
        inference.encode(config, tmp_path / "run",
                           f"{tmp_path / 'pngs' / 'digit_0.png'},{tmp_path / 'rgb.png'}", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        inference.common.load_image_list(str(tmp_path / "empty"), config)
