"""Fitting big models: bfloat16 compute (config.model.dtype), rematerialization (model.remat)
and gradient accumulation (training.grad_accum_steps)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models_parity import PARITY, parity_case
from training_helpers import ROOT, tiny_toy_config

from score_sde_jax import (
    checkpoints,
    likelihood,
    losses,
    memory_estimate,
    sampling,
    sde_lib,
    sharding,
    train_lib,
)
from score_sde_jax.cli import load_config
from score_sde_jax.models import get_model, init_model
from score_sde_jax.models import utils as mutils

TINY = {name: os.path.join(ROOT, "configs/tiny", f"{name}.py")
        for name in ("tiny_ncsnpp", "tiny_ddpm", "tiny_ncsnv2", "tiny_ddpmpp")}


def tree_rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ over all leaves of two pytrees."""
    diff = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                           jax.tree_util.tree_leaves(b), strict=True))
    norm = sum(float(jnp.sum(y**2)) for y in jax.tree_util.tree_leaves(b))
    return (diff / norm) ** 0.5


# ---------------------------------------------------------------------------- bfloat16
@pytest.mark.parametrize("name", sorted(PARITY))
def test_bfloat16_output_on_the_parity_references(name):
    """The official networks' reference outputs (float32 matches them to ~2e-6): bfloat16
    compute stays within 3 % relative L2 (measured 2026-12-01: NCSN++ 1.1 %, DDPM++ 1.8 %,
    DDPM 1.8 %), is really lower precision (> 0.1 %), and comes back as float32."""
    config, state, _ = parity_case(name)
    config.model.dtype = "bfloat16"
    variables = checkpoints.from_official_pytorch(state, config)
    y = jax.jit(get_model(config).apply, static_argnames="train")(
        variables, jnp.asarray(state["__input_nhwc"]), jnp.asarray(state["__labels"]), train=False)
    want = state["__output_nhwc"]
    assert y.dtype == jnp.float32
    rel = np.linalg.norm(y - want) / np.linalg.norm(want)
    assert 1e-3 < rel < 3e-2, rel


def _dtypes_of(jaxpr, primitive: str) -> set:
    """dtypes of the operands of every ``primitive`` in ``jaxpr`` and its inner jaxprs."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found |= {str(v.aval.dtype) for v in eqn.invars}
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple | list) else (value,):
                inner = item if hasattr(item, "eqns") else getattr(item, "jaxpr", None)
                if hasattr(inner, "eqns"):
                    found |= _dtypes_of(inner, primitive)
    return found


@pytest.mark.parametrize("name", ["tiny_ncsnpp", "tiny_ddpm", "tiny_ncsnv2"])
def test_bfloat16_convolutions_and_float32_parameters(name):
    """Every convolution of the bf16 network computes in bfloat16; parameters are float32."""
    config = load_config(TINY[name])
    config.model.dtype = "bfloat16"
    params = jax.eval_shape(lambda r: init_model(r, config), jax.random.PRNGKey(0))
    assert {str(p.dtype) for p in jax.tree_util.tree_leaves(params)} == {"float32"}
    x = jnp.zeros((2, *mutils.data_shape(config)))
    labels = jnp.ones((2,), jnp.float32) if name == "tiny_ncsnpp" else jnp.ones((2,), jnp.int32)
    variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    jaxpr = jax.make_jaxpr(lambda v: get_model(config).apply(v, x, labels, train=False))(variables)
    assert _dtypes_of(jaxpr.jaxpr, "conv_general_dilated") == {"bfloat16"}
    assert jaxpr.out_avals[0].dtype == jnp.float32


def test_unknown_dtype_names_the_key():
    config = load_config(TINY["tiny_ddpmpp"])
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match=r"config.model.dtype='float16' is not one of"):
        init_model(jax.random.PRNGKey(0), config)


def _labels(name):
    return jnp.array([0.3, 7.0]) if name == "tiny_ncsnpp" else jnp.array([3, 17], jnp.int32)


@pytest.mark.parametrize("name", ["tiny_ncsnpp", "tiny_ddpm", "tiny_ncsnv2", "tiny_ddpmpp"])
def test_float64_networks_compute_in_float64_throughout(name, x64):
    """model.dtype = 'float64' (for precision checks): every convolution, the sinusoidal
    embeddings and the output are float64 (traced, not compiled)."""
    config = load_config(TINY[name])
    config.model.dtype = "float64"
    params = jax.eval_shape(lambda r: init_model(r, config), jax.random.PRNGKey(0))
    wide = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float64), params)
    x = jnp.zeros((2, *mutils.data_shape(config)), jnp.float64)
    jaxpr = jax.make_jaxpr(lambda v: get_model(config).apply(v, x, _labels(name), train=False))(wide)
    assert _dtypes_of(jaxpr.jaxpr, "conv_general_dilated") == {"float64"}
    assert not _dtypes_of(jaxpr.jaxpr, "sin") - {"float64"}
    assert jaxpr.out_avals[0].dtype == jnp.float64


def test_a_float64_network_equals_the_float32_one_to_float32_precision(x64):
    config = tiny_toy_config()  # the MLP; the conv nets' dtypes are checked above

    def apply(v, x):
        return get_model(config).apply(v, x, jnp.array([0.2, 0.9]), train=False)

    variables = init_model(jax.random.PRNGKey(0), config)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 2), jnp.float32)
    y32 = jax.jit(apply)(variables, x)
    config.model.dtype = "float64"
    y64 = jax.jit(apply)(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables),
                         x.astype(jnp.float64))
    assert y64.dtype == jnp.float64 and y32.dtype == jnp.float32
    rel = float(jnp.linalg.norm(y64 - y32) / jnp.linalg.norm(y64))
    assert 0 < rel < 1e-5, rel


def test_float64_without_x64_is_an_error_naming_the_flag():
    config = load_config(TINY["tiny_ddpmpp"])
    config.model.dtype = "float64"
    with pytest.raises(ValueError, match=r"config.model.dtype='float64' needs jax_enable_x64"):
        init_model(jax.random.PRNGKey(0), config)


@pytest.mark.parametrize("method", ["pc", "ode", "heun", "dpm_solver"])
def test_bfloat16_score_network_in_every_sampler_and_the_likelihood(method):
    """A bf16 network plugs into the samplers and the likelihood unchanged: float32 out."""
    config = tiny_toy_config(**{"model.dtype": "bfloat16", "sampling.method": method})
    config.model.num_scales = 20
    config.sampling.num_steps = 5
    sde, eps = sde_lib.get_sde(config)
    model = get_model(config)
    variables = init_model(jax.random.PRNGKey(0), config)
    score = mutils.get_score_fn(sde, model, variables, continuous=True)
    x, _ = jax.jit(lambda r: sampling.get_sampling_fn(config, sde, (4, 2), eps)(r, score))(
        jax.random.PRNGKey(1))
    assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
    if method == "ode":
        logp, z, _ = jax.jit(lambda r: likelihood.get_likelihood_fn(sde, rtol=1e-3, atol=1e-3)(
            r, score, x))(jax.random.PRNGKey(2))
        assert logp.dtype == z.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logp)))


# ---------------------------------------------------------------------------- remat
def _with_remat(config):
    remat = config.copy_and_resolve_references()
    remat.model.remat = True
    return remat


@pytest.mark.parametrize("name", ["tiny_ncsnpp", "tiny_ddpm", "tiny_ncsnv2", "tiny_ncsnpp_skip"])
def test_remat_keeps_the_parameter_tree(name):
    """Same names and shapes: checkpoints and the official-weight import load unchanged."""
    config = load_config(os.path.join(ROOT, "configs/tiny", f"{name}.py"))

    def shapes(cfg):
        return jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), jax.eval_shape(
            lambda r: init_model(r, cfg), jax.random.PRNGKey(0)))

    assert shapes(_with_remat(config)) == shapes(config)


@pytest.mark.parametrize("name", ["tiny_ncsnpp"])  # tiny_ncsnv2 passes too (2026-12-01), slower
def test_remat_gradients_equal_the_plain_ones(name):
    """The DSM gradients with dropout on, to 1e-6 relative (float32): NCSN++'s BigGAN and
    attention blocks (DDPM's and NCSNv2's blocks share ``layers.maybe_remat``), on the tiny
    config cut to one 8x8 resolution (every block kind still present, half the compile)."""
    config = load_config(TINY[name])
    config.model.dropout = 0.2
    config.data.image_size, config.model.ch_mult, config.model.attn_resolutions = 8, (1,), (8,)
    config.training.continuous = True
    sde, _ = sde_lib.get_sde(config)
    variables = init_model(jax.random.PRNGKey(0), config)
    remat = _with_remat(config)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, *mutils.data_shape(config)))
    loss_fn = losses.get_sde_loss_fn(sde)

    def grads(cfg):
        def loss(params):
            fn = mutils.get_score_fn(sde, get_model(cfg), {"params": params}, train=True,
                                     continuous=True, rng=jax.random.PRNGKey(3))
            return loss_fn(jax.random.PRNGKey(2), fn, x)

        return mutils.compile_once(jax.grad(loss), variables["params"])(variables["params"])

    plain = grads(config)
    assert tree_rel(grads(remat), plain) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(plain)) > 0


# ---------------------------------------------------------------------------- accumulation
def _three_updates(config, devices):
    mesh = sharding.make_mesh(devices)
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
    rng = np.random.default_rng(0)
    step = train_lib.compile_train_step(config, mesh)
    for _ in range(3):
        batch = {"image": rng.normal(size=(64, 2)).astype(np.float32),
                 "label": np.zeros(64, np.int32)}
        state, metrics = step(state, sharding.make_global_batch(batch, mesh))
    return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("n_devices, dropout", [(1, 0.3), (8, 0.3), (8, 0.0)])
def test_accumulating_four_microbatches_gives_the_full_batch_update(n_devices, dropout):
    """grad_accum_steps=4 (microbatches of 16, sharded over the devices), with dropout (each
    example alone) and without (the batched loss): the parameters, EMA and metrics of one
    full-batch update per step, after 3 updates."""
    config = tiny_toy_config(**{"model.dropout": dropout, "optim.warmup": 1})
    devices = jax.devices()[:n_devices]
    full, full_metrics = _three_updates(config, devices)
    config.training.grad_accum_steps = 4
    accum, accum_metrics = _three_updates(config, devices)
    start = train_lib.create_train_state(config, jax.random.PRNGKey(0)).params
    moved = jax.tree_util.tree_map(jnp.subtract, full.params, start)
    assert tree_rel(accum.params, full.params) < 1e-5
    assert tree_rel(jax.tree_util.tree_map(jnp.subtract, accum.params, start), moved) < 1e-3
    assert tree_rel(accum.params_ema, full.params_ema) < 1e-5
    np.testing.assert_allclose(accum_metrics["loss"], full_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(accum_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("objective, dropout", [("dsm", 0.0), ("smld", 0.0), ("ddpm", 0.0),
                                                ("dsm", 0.3), ("ddpm", 0.3)])
def test_the_batched_loss_equals_the_per_example_one(objective, dropout):
    """The train step runs the score loss once on the batch with per-example keys
    (losses.batched_loss), the dropout masks included (prng.batch_key); its value and
    gradient are those of the batch-of-one calls, each with its own key."""
    overrides = {"dsm": {}, "smld": {"training.sde": "vesde", "training.continuous": False},
                 "ddpm": {"training.continuous": False}}[objective]
    config = tiny_toy_config(**overrides, **{"model.dropout": dropout})
    assert losses.batched_loss(config)
    sde, _ = sde_lib.get_sde(config)
    loss = losses.get_step_loss(config, sde, get_model(config), train=True)
    params = train_lib.create_train_state(config, jax.random.PRNGKey(0)).params
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    batch = {"image": jax.random.normal(jax.random.PRNGKey(2), (8, 2)), "label": jnp.zeros(8, jnp.int32)}
    grads = {batched: jax.jit(jax.value_and_grad(losses.summed_per_example(loss, batched),
                                                 has_aux=True))(params, keys, batch)
             for batched in (True, False)}
    (whole, _), g_whole = grads[True]
    (alone, _), g_alone = grads[False]
    np.testing.assert_allclose(whole, alone, rtol=1e-6)
    assert tree_rel(g_whole, g_alone) < 1e-6 and float(whole) > 0
    if dropout:  # the masks are really per example: one key for all examples changes the loss
        shared = jnp.broadcast_to(keys[:1], keys.shape)
        same, _ = jax.jit(losses.summed_per_example(loss, True))(params, shared, batch)
        assert abs(float(same) - float(whole)) > 1e-3 * float(whole)


def test_batched_dropout_masks_on_an_image_network():
    """tiny DDPM++ (one 8x8 resolution) with dropout 0.5: one batched call with per-example
    dropout keys gives, row b, the output of example b alone with key b (the masks of every
    residual block); example 1 alone with key 0 does not."""
    config = load_config(TINY["tiny_ddpmpp"])
    config.model.dropout = 0.5
    config.data.image_size, config.model.ch_mult, config.model.attn_resolutions = 8, (1,), (8,)
    model = get_model(config)
    variables = init_model(jax.random.PRNGKey(0), config)
    noise = np.random.default_rng(0)  # NumPy: jax.random would compile a draw for every shape
    variables = jax.tree_util.tree_map(  # nonzero output convs (init scale 0)
        lambda v: np.asarray(v) + np.float32(0.05) * noise.standard_normal(v.shape, np.float32),
        variables)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, *mutils.data_shape(config)))
    labels = jnp.asarray([3.0, 500.0, 900.0])
    keys = jax.random.split(jax.random.PRNGKey(2), 3)

    def compiled(*args):
        return mutils.compile_once(
            lambda x, y, k: mutils.get_model_fn(model, variables, True, k)(x, y), *args)

    whole = compiled(x, labels, keys)(x, labels, keys)
    one = compiled(x[:1], labels[:1], keys[0])  # batch of one, one key: compiled once
    alone = jnp.concatenate([one(x[b:b + 1], labels[b:b + 1], keys[b]) for b in range(3)])
    np.testing.assert_allclose(whole, alone, atol=1e-5 * float(jnp.abs(alone).max()))
    other_key = one(x[1:2], labels[1:2], keys[0])
    assert float(jnp.abs(other_key - whole[1:2]).max()) > 1e-3 * float(jnp.abs(alone).max())


def test_accumulation_errors_name_the_key():
    config = tiny_toy_config(**{"training.grad_accum_steps": 3})
    mesh = sharding.make_mesh()
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
    batch = sharding.make_global_batch({"image": np.zeros((64, 2), np.float32),
                                         "label": np.zeros(64, np.int32)}, mesh)
    with pytest.raises(ValueError, match=r"grad_accum_steps=3 does not divide the global batch=64 "):
        train_lib.compile_train_step(config, mesh)(state, batch)
    config.training.grad_accum_steps = 16
    with pytest.raises(ValueError, match=r"grad_accum_steps=16 makes microbatches of 4, not a "
                                         r"multiple of the number of devices \(8\)"):
        train_lib.compile_train_step(config, mesh)(state, batch)
    config.training.grad_accum_steps = 0
    with pytest.raises(ValueError, match=r"config.training.grad_accum_steps=0 must be a positive"):
        train_lib.get_train_step(config)


def test_bfloat16_accumulated_training_keeps_float32_state():
    """bf16 compute with accumulation: parameters, Adam moments and EMA stay float32."""
    config = tiny_toy_config(**{"model.dtype": "bfloat16", "training.grad_accum_steps": 2})
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (8, 2)),
             "label": jnp.zeros(8, jnp.int32)}
    state, metrics = jax.jit(train_lib.get_train_step(config))(state, batch, jax.random.PRNGKey(2))
    dtypes = {str(v.dtype) for v in jax.tree_util.tree_leaves(
        (state.params, state.opt_state, state.params_ema)) if jnp.issubdtype(v.dtype, jnp.floating)}
    assert dtypes == {"float32"}
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


# ---------------------------------------------------------------------------- memory estimate
def test_remat_and_bfloat16_shrink_the_saved_residuals():
    """``memory_estimate.saved_residual_bytes`` (bench/memory.py's estimate) on the tiny DDPM++ at
    batch 8: remat keeps < 1/4 and bf16 between 1/2 and 0.8 of float32's residuals for the
    backward pass, and remat's recompute of one block is under 1/4 of float32's total."""
    def measured(dtype="float32", remat=False):
        config = load_config(TINY["tiny_ddpmpp"])
        config.model.dtype, config.model.remat = dtype, remat
        return memory_estimate.saved_residual_bytes(config, 8)

    fp32, remat, bf16 = measured(), measured(remat=True), measured("bfloat16")
    assert fp32["recompute"] == bf16["recompute"] == 0 < remat["recompute"] < fp32["saved"] / 4
    assert 0 < remat["saved"] < fp32["saved"] / 4
    assert fp32["saved"] / 2 < bf16["saved"] < 0.8 * fp32["saved"]
