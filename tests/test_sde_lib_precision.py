"""In float32 (JAX's default), the perturbation kernels and the discretizations of the SDEs keep
float32 accuracy at small t and small steps: ``1 − e^{−x}`` and ``√α − 1`` are computed
without cancellation (expm1 / log1p), checked against float64 references in NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from score_sde_jax import sde_lib

T_SMALL = np.array([1e-5, 1e-4, 1e-3, 1e-2, 0.5, 1.0])
RTOL = 4e-6  # a few float32 ulps; the 1 − exp(...) forms were off by up to ~1e-3 here


def _lmc64(t, beta_min=0.1, beta_max=20.0):
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


@pytest.fixture(autouse=True)
def _float32():
    assert jnp.zeros(()).dtype == jnp.float32  # these tests are about float32


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_marginal_std_at_small_t_matches_float64(name):
    sde = sde_lib.VPSDE() if name == "vp" else sde_lib.subVPSDE()
    one_minus = -np.expm1(2.0 * _lmc64(T_SMALL))
    reference = np.sqrt(one_minus) if name == "vp" else one_minus
    t = jnp.asarray(T_SMALL, jnp.float32)
    std = np.asarray(sde.marginal_prob(jnp.ones((len(t), 2)), t)[1], np.float64)
    np.testing.assert_allclose(std, reference, rtol=RTOL)


def test_sub_vp_diffusion_at_small_t_matches_float64():
    sde = sde_lib.subVPSDE()
    beta = 0.1 + T_SMALL * (20.0 - 0.1)
    reference = np.sqrt(beta * -np.expm1(4.0 * _lmc64(T_SMALL)))
    g = np.asarray(sde.sde(jnp.ones((len(T_SMALL), 2)), jnp.asarray(T_SMALL, jnp.float32))[1])
    np.testing.assert_allclose(g, reference, rtol=RTOL)


def test_discretizations_and_tables_match_float64():
    n = 1000
    i = np.array([0, 1, 2, 10, 500, 999])
    t = jnp.asarray(i / (n - 1), jnp.float32) + 1e-7  # step_index truncates
    betas = np.linspace(0.1 / n, 20.0 / n, n)
    vp = sde_lib.VPSDE(0.1, 20.0, n)
    f, g = vp.discretize(jnp.ones((len(i), 1)), t)
    assert list(sde_lib.step_index(t, n, 1.0)) == list(i)
    np.testing.assert_allclose(np.asarray(f)[:, 0], np.sqrt(1.0 - betas[i]) - 1.0, rtol=RTOL)
    np.testing.assert_allclose(g, np.sqrt(betas[i]), rtol=RTOL)
    cumprod = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(vp.sqrt_1m_alphas_cumprod, np.sqrt(1.0 - cumprod), rtol=RTOL)
    np.testing.assert_allclose(vp.sqrt_alphas_cumprod, np.sqrt(cumprod), rtol=RTOL)

    ve = sde_lib.VESDE(0.01, 50.0, n)
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), n))
    prev = np.where(i == 0, 0.0, sigmas[np.maximum(i - 1, 0)])
    np.testing.assert_allclose(ve.discretize(jnp.ones((len(i), 1)), t)[1],
                               np.sqrt(sigmas[i] ** 2 - prev**2), rtol=RTOL)
    np.testing.assert_allclose(ve.discrete_sigmas, sigmas, rtol=RTOL)
