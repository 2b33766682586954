"""Per-example keys: example b's noise depends on its own key alone, in every sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde_jax import prng, sampling, sde_lib


def test_one_key_draws_like_jax_random_and_per_example_keys_draw_alone():
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(prng.normal(key, (3, 2)), jax.random.normal(key, (3, 2)))
    np.testing.assert_array_equal(prng.split(key, 3), jax.random.split(key, 3))
    keys = prng.example_keys(key, jnp.arange(5))
    assert prng.per_example(keys) and not prng.per_example(key)
    batch = prng.normal(keys, (5, 4))
    np.testing.assert_array_equal(batch[3], jax.random.normal(jax.random.fold_in(key, 3), (4,)))
    np.testing.assert_array_equal(prng.split(keys, 2)[1][2], jax.random.split(keys[2])[1])
    np.testing.assert_array_equal(prng.rademacher(keys[1:3], (2, 6)), prng.rademacher(keys, (5, 6))[1:3])
    with pytest.raises(ValueError, match="5 per-example keys for a batch of shape \\(4, 4\\)"):
        prng.normal(keys, (4, 4))


def test_a_batch_key_acts_on_each_example_key():
    """prng.batch_key: one typed key whose fold_in / split act per example, and whose draws of
    shape (B, ...) are, row b, the draws of shape (1, ...) from key b (as nn.Dropout makes them)."""
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    key = jax.jit(lambda k: jax.random.fold_in(prng.batch_key(k), 7))(keys)
    folded = [jax.random.fold_in(k, 7) for k in keys]
    np.testing.assert_array_equal(jax.random.key_data(key), np.stack(folded))
    mask = jax.random.bernoulli(key, 0.7, (3, 4, 5))
    for b in range(3):
        np.testing.assert_array_equal(mask[b], jax.random.bernoulli(folded[b], 0.7, (1, 4, 5))[0])
    split = jax.random.key_data(jax.random.split(prng.batch_key(keys), 2))
    np.testing.assert_array_equal(split[1, 2], jax.random.split(keys[2])[1])
    np.testing.assert_array_equal(jax.random.normal(prng.batch_key(keys), (3, 2))[1],
                                  jax.random.normal(keys[1], (1, 2))[0])
    with pytest.raises(ValueError, match="draws shapes \\(3, ...\\), not \\(2, 4\\)"):
        jax.random.normal(prng.batch_key(keys), (2, 4))


@pytest.mark.parametrize("data", [0, 7, 2**31 + 5, 2**32 - 1])
def test_a_batch_key_folds_in_as_jax_does(data):
    """The batch key's fold_in (threefry written out) gives jax.random.fold_in's keys for any
    32-bit value, traced or not (Flax folds module-path hashes into the dropout key)."""
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    want = np.stack([jax.random.key_data(jax.random.fold_in(k, data)) for k in keys])
    got = jax.random.key_data(jax.random.fold_in(prng.batch_key(keys), data))
    np.testing.assert_array_equal(got, want)
    traced = jax.jit(lambda k, d: jax.random.key_data(jax.random.fold_in(prng.batch_key(k), d)))
    np.testing.assert_array_equal(traced(keys, np.uint32(data)), want)
    with pytest.raises(ValueError, match="batch_key takes a batch of keys"):
        prng.batch_key(keys[0])


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint16, jnp.uint32, jnp.uint64])
def test_batch_key_bits_are_jax_threefry_bits(x64, dtype):
    """The batch key's own Threefry-2x32 (prng.threefry2x32, unrolled jnp) gives jax.random's
    bits of every width, key by key, jitted or not."""
    keys = jax.random.split(jax.random.PRNGKey(11), 4)
    for shape in [(4,), (4, 7), (4, 3, 5, 2)]:
        want = jax.vmap(lambda k, s=shape: jax.random.bits(k, s[1:], dtype))(keys)
        np.testing.assert_array_equal(jax.random.bits(prng.batch_key(keys), shape, dtype), want)
        np.testing.assert_array_equal(
            jax.jit(lambda k, s=shape: jax.random.bits(prng.batch_key(k), s, dtype))(keys), want)


def test_threefry2x32_known_answers():
    """prng.threefry2x32 gives the published Random123 known-answer vectors (Salmon et al. 2011)."""
    def u(v):
        return jnp.asarray(v, jnp.uint32)

    cases = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
             ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
             ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for (k0, k1), (x0, x1), expected in cases:
        out = prng.threefry2x32(u(k0), u(k1), u(x0), u(x1))
        assert tuple(int(v) for v in out) == expected


def test_rademacher_probes_are_the_same_with_and_without_x64():
    key = jax.random.PRNGKey(3)
    plain = prng.rademacher(key, (4, 50))
    np.testing.assert_array_equal(plain, jax.random.rademacher(key, (4, 50)))
    with jax.enable_x64(True):
        wide = prng.rademacher(key, (4, 50), jnp.float64)
    assert wide.dtype == jnp.float64
    np.testing.assert_array_equal(wide, plain)
    assert set(np.unique(plain)) == {-1.0, 1.0}


@pytest.mark.parametrize("method", ["pc_ald", "ode_none", "heun_churn"])
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(method):
    sde = sde_lib.VPSDE(N=10)
    shape = (6, 3)
    make = {
        "pc_ald": lambda s: sampling.get_pc_sampler(sde, s, "euler_maruyama", "ald", snr=0.1),
        "ode_none": lambda s: sampling.get_dpm_solver_sampler(sde, s, num_steps=5),
        "heun_churn": lambda s: sampling.get_heun_sampler(sde, s, num_steps=4, s_churn=1.0),
    }[method]
    keys = prng.example_keys(jax.random.PRNGKey(1), jnp.arange(6))
    score = lambda x, t: -x  # noqa: E731 -- any per-example score
    whole, _ = jax.jit(lambda k: make(shape)(k, score))(keys)
    part, _ = jax.jit(lambda k: make((2, 3))(k, score))(keys[jnp.array([4, 1])])
    np.testing.assert_allclose(part, whole[jnp.array([4, 1])], rtol=1e-5, atol=1e-6)
    assert not np.allclose(whole[0], whole[1])
