"""NCSN++ / DDPM++ / DDPM against the official networks, and their building blocks.

tests/data/*_small.{npz,json}: official PyTorch weights, input, labels and output (see
/work/shared/parity/README.md); the official full-size parameter counts are
test_configs.py's.
"""

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_helpers import normal, uniform

from score_sde_jax import checkpoints
from score_sde_jax.cli import load_config
from score_sde_jax.models import get_model, layers, layerspp
from score_sde_jax.models import up_or_down_sampling as ud
from score_sde_jax.models import utils as mutils

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
PARITY = {
    "ncsnpp_ve_continuous_small": "configs/ve/cifar10_ncsnpp_continuous.py",
    "ddpmpp_vp_continuous_small": "configs/vp/cifar10_ddpmpp_continuous.py",
    "ddpm_vp_small": "configs/vp/ddpm/cifar10.py",
}


def parity_case(name):
    """(config, state_dict, reference json): the official config file with the JSON overlaid."""
    with open(os.path.join(DATA, f"{name}.json")) as f:
        ref = json.load(f)
    config = load_config(os.path.join(ROOT, PARITY[name]))
    for section in ("model", "data"):
        for key, value in ref[section].items():
            config[section][key] = value
    with np.load(os.path.join(DATA, f"{name}.npz")) as d:
        state = {k: d[k] for k in d.files}
    return config, state, ref


def count(tree):
    return sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(
        tree, is_leaf=lambda s: isinstance(s, tuple)))


@pytest.mark.parametrize("name", sorted(PARITY))
def test_official_pytorch_output(name):
    config, state, ref = parity_case(name)
    variables = checkpoints.from_official_pytorch(state, config)
    assert count(jax.tree_util.tree_map(np.shape, variables)) == ref["num_params"]
    x, labels = jnp.asarray(state["__input_nhwc"]), jnp.asarray(state["__labels"])
    model = get_model(config)
    y = mutils.compile_once(lambda v, x, y: model.apply(v, x, y, train=False), variables, x,
                            labels)(variables, x, labels)
    want = state["__output_nhwc"]
    assert y.shape == want.shape
    assert np.linalg.norm(y - want) / np.linalg.norm(want) < 1e-4
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def random_variables(shapes, seed=0):
    """Random parameters with the shapes of a template, ~N(0, 1/fan_in) (no model.init)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: rng.standard_normal(s, dtype=np.float32) / np.sqrt(np.prod(s[:-1]) or 1),
        shapes, is_leaf=lambda s: isinstance(s, tuple))


def test_full_size_ncsnpp_forward_batch2():
    config = load_config(os.path.join(ROOT, "configs/ve/cifar10_ncsnpp_continuous.py"))
    shapes, _ = checkpoints.model_template(config)
    variables = random_variables(shapes)
    x = uniform(1, (2, 32, 32, 3))
    sigmas = jnp.array([0.01, 50.0])
    model = get_model(config)
    y = jax.jit(lambda v, x, s: model.apply(v, x, s, train=False))(variables, x, sigmas)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    # scale_by_sigma: the output is divided by sigma, so the sigma=0.01 sample is far larger.
    assert float(jnp.abs(y[0]).mean()) > 100 * float(jnp.abs(y[1]).mean()) > 0


# ---------------------------------------------------------------- configuration combinations


def tiny_config(**overrides):
    config, _, _ = parity_case("ncsnpp_ve_continuous_small")
    m = config.model
    m.nf, m.ch_mult, m.attn_resolutions, m.num_res_blocks = 8, (1, 2), (4,), 1
    config.data.image_size = 8
    for key, value in overrides.items():
        m[key] = value
    return config


COMBOS = list(itertools.product(("none", "output_skip", "residual"),
                                ("none", "input_skip", "residual"),
                                ("ddpm", "biggan"), (False, True)))


def test_all_option_combinations_build():
    """Every combination of the progressive (output, input), resblock and FIR options builds,
    each with one of the two time embeddings (which enter only through the time-embedding MLP,
    untouched by these options): every (resblock, FIR) pair and every value of the other
    options is built with both, each embedding 18 times."""
    sigmas = jnp.array([0.5, 3.0])
    for i, (progressive, progressive_input, resblock, fir) in enumerate(COMBOS):
        embedding = ("fourier", "positional")[(i + i // 2 + i // 4) % 2]
        config = tiny_config(progressive=progressive, progressive_input=progressive_input,
                             resblock_type=resblock, fir=fir, embedding_type=embedding,
                             progressive_combine="cat" if fir else "sum",
                             scale_by_sigma=embedding == "fourier")
        model = get_model(config)
        x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
        out = jax.eval_shape(
            lambda x, m=model: m.init_with_output({"params": jax.random.PRNGKey(0)}, x, sigmas,
                                                  train=False)[0], x)
        assert out.shape == (2, 8, 8, 3), (progressive, progressive_input, resblock, fir, embedding)


@pytest.mark.parametrize("progressive,progressive_input,resblock,fir", [
    ("residual", "residual", "ddpm", True),  # FIR upsample_conv_2d / conv_downsample_2d
    ("output_skip", "input_skip", "biggan", False),  # non-FIR output skip (nearest)
    ("output_skip", "input_skip", "ddpm", True),  # FIR upsample_2d pyramid, FIR Conv2d blocks
])
def test_option_combinations_run(progressive, progressive_input, resblock, fir):
    config = tiny_config(progressive=progressive, progressive_input=progressive_input,
                         resblock_type=resblock, fir=fir, dropout=0.5)
    model = get_model(config)
    shapes, _ = checkpoints.model_template(config)
    variables = random_variables(shapes)  # no zero-initialised output convolutions
    x = normal(0, (2, 8, 8, 3))
    sigmas = jnp.array([0.5, 3.0])
    forward = mutils.compile_once(lambda v, x, s: model.apply(v, x, s, train=False), variables, x,
                                  sigmas)
    y = forward(variables, x, sigmas)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    assert float(jnp.abs(y).max()) > 0
    # Samples are processed independently of each other.
    y_swapped = forward(variables, x[::-1], sigmas[::-1])
    np.testing.assert_allclose(y_swapped[::-1], y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [  # ResnetBlockDDPMpp shares BigGANpp's branch code
    lambda: layerspp.ResnetBlockBigGANpp(act=jax.nn.swish, out_ch=8, dropout=0.5, init_scale=1.0),
    lambda: layers.ResnetBlockDDPM(act=jax.nn.swish, dropout=0.5,
                                   normalize=functools.partial(layers.group_norm, num_groups=4)),
])
def test_dropout_only_when_training(block):
    block = block()
    x = normal(0, (2, 4, 4, 8))
    temb = normal(1, (2, 16))
    variables = jax.jit(block.init, static_argnames="train")(jax.random.PRNGKey(2), x, temb,
                                                            train=False)
    apply = jax.jit(block.apply, static_argnames="train")
    rngs = {"dropout": jax.random.PRNGKey(3)}
    evaluated = apply(variables, x, temb, train=False)
    np.testing.assert_array_equal(evaluated, apply(variables, x, temb, train=False, rngs=rngs))
    assert not np.allclose(apply(variables, x, temb, train=True, rngs=rngs), evaluated)


def test_official_flax_module_names():
    config, _, _ = parity_case("ncsnpp_ve_continuous_small")
    shapes, order = checkpoints.model_template(config)
    biggan = [f"ResnetBlockBigGANpp_{i}" for i in range(10)]
    assert order == ["GaussianFourierProjection_0", "Dense_0", "Dense_1", "Conv_0", *biggan[:2],
                     "Downsample_0", biggan[2], "AttnBlockpp_0", biggan[3], "AttnBlockpp_1",
                     biggan[4], *biggan[5:7], "AttnBlockpp_2", *biggan[7:], "GroupNorm_0",
                     "Conv_1"]
    p = shapes["params"]
    assert p["Downsample_0"] == {"Conv2d_0": {"weight": (3, 3, 3, 32), "bias": (32,)}}
    assert sorted(p["ResnetBlockBigGANpp_1"]) == ["Conv_0", "Conv_1", "Conv_2", "Dense_0",
                                                  "GroupNorm_0", "GroupNorm_1"]
    assert sorted(p["AttnBlockpp_0"]) == ["GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"]
    assert p["GaussianFourierProjection_0"] == {"W": (32,)}


# ---------------------------------------------------------------- FIR resampling


def upfirdn_reference(x, k, up, down, pad0, pad1):
    """upfirdn_2d from its definition, with loops."""
    n, h, w, c = x.shape
    u = np.zeros((n, h * up, w * up, c))
    u[:, ::up, ::up, :] = x
    lo, hi = max(pad0, 0), max(pad1, 0)
    u = np.pad(u, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    c0, c1 = max(-pad0, 0), max(-pad1, 0)  # negative padding crops
    u = u[:, c0:u.shape[1] - c1, c0:u.shape[2] - c1, :]
    kh, kw = k.shape
    out = np.zeros((n, u.shape[1] - kh + 1, u.shape[2] - kw + 1, c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            window = u[:, i:i + kh, j:j + kw, :]
            out[:, i, j, :] = np.einsum("nabc,ab->nc", window, k[::-1, ::-1])
    return out[:, ::down, ::down, :]


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("up,down,pad0,pad1", [(2, 1, 2, 1), (1, 2, 1, 1), (1, 1, 0, 0),
                                                (3, 1, -1, 2), (2, 2, 3, 0), (1, 2, -1, 0)])
def test_upfirdn_matches_definition(separable, up, down, pad0, pad1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    # Asymmetric kernels check the flip; separable ones take the 1-D (polyphase) path.
    k = np.outer(rng.normal(size=4), rng.normal(size=4)) if separable else rng.normal(size=(4, 4))
    got = ud.upfirdn_2d(jnp.asarray(x), k, up=up, down=down, pad0=pad0, pad1=pad1)
    np.testing.assert_allclose(got, upfirdn_reference(x, k, up, down, pad0, pad1),
                               rtol=1e-5, atol=1e-5)


def conv_same(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_fir_box_kernel_is_nearest_and_average():
    up = jax.jit(ud.upsample_2d, static_argnums=1)
    down = jax.jit(ud.downsample_2d, static_argnums=1)
    x = normal(0, (2, 6, 6, 4))
    nearest = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(up(x, (1, 1)), nearest, atol=1e-6)
    np.testing.assert_allclose(ud.naive_upsample_2d(x), nearest, atol=0)
    avg = x.reshape(2, 3, 2, 3, 2, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(down(x, (1, 1)), avg, atol=1e-6)
    np.testing.assert_allclose(ud.naive_downsample_2d(x), avg, atol=1e-6)
    # A normalised FIR filter keeps a constant image constant away from the border.
    ones = jnp.ones((1, 8, 8, 1))
    np.testing.assert_allclose(up(ones, (1, 3, 3, 1))[:, 2:-2, 2:-2], 1, rtol=1e-6)
    np.testing.assert_allclose(down(ones, (1, 3, 3, 1))[:, 1:-1, 1:-1], 1, rtol=1e-6)


def test_fused_resampling_convolutions():
    jit = functools.partial(jax.jit, static_argnums=2)
    up_conv, conv_down = jit(ud.upsample_conv_2d), jit(ud.conv_downsample_2d)
    up, down = jit(ud.upsample_2d, static_argnums=1), jit(ud.downsample_2d, static_argnums=1)
    x = normal(0, (2, 8, 8, 3))
    w = normal(1, (3, 3, 3, 5))
    # Nearest-neighbour kernel: the fused op is exactly upsample-then-conv.
    np.testing.assert_allclose(up_conv(x, w, (1, 1)),
                               conv_same(ud.naive_upsample_2d(x), w), rtol=1e-5, atol=1e-5)
    # FIR kernel: identical away from the border, where only padding differs.
    fused = up_conv(x, w, (1, 3, 3, 1))
    assert fused.shape == (2, 16, 16, 5)
    unfused = conv_same(up(x, (1, 3, 3, 1)), w)
    np.testing.assert_allclose(fused[:, 3:-3, 3:-3], unfused[:, 3:-3, 3:-3], rtol=1e-5, atol=1e-5)
    assert not np.allclose(fused, unfused)
    fused_down = conv_down(x, w, (1, 3, 3, 1))
    assert fused_down.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(fused_down[:, 1:-1, 1:-1],
                               down(conv_same(x, w), (1, 3, 3, 1))[:, 1:-1, 1:-1],
                               rtol=1e-5, atol=1e-5)


def test_conv2d_module_resamples():
    x = jnp.ones((1, 8, 8, 2))
    for kwargs, size in [({"up": True}, 16), ({"down": True}, 4), ({}, 8)]:
        conv = ud.Conv2d(fmaps=6, kernel=3, **kwargs)
        y, variables = conv.init_with_output(jax.random.PRNGKey(0), x)
        assert y.shape == (1, size, size, 6)
        assert variables["params"]["weight"].shape == (3, 3, 2, 6)
    with pytest.raises(ValueError, match="up and down"):
        ud.Conv2d(fmaps=1, kernel=3, up=True, down=True).init(jax.random.PRNGKey(0), x)


# ---------------------------------------------------------------- small layers


def test_timestep_embedding_values():
    t = jnp.array([0.0, 1.0, 500.0])
    emb = layers.get_timestep_embedding(t, 8)
    freqs = np.exp(-np.arange(4) * np.log(10000) / 3)
    want = np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], axis=1)
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)
    assert layers.get_timestep_embedding(t, 9).shape == (3, 9)


def test_fourier_projection_and_nin():
    proj = layerspp.GaussianFourierProjection(embedding_size=4, scale=16.0)
    x = jnp.array([0.0, 0.25])
    y, variables = proj.init_with_output(jax.random.PRNGKey(0), x)
    w = variables["params"]["W"]
    arg = 2 * np.pi * np.outer(x, w)
    np.testing.assert_allclose(y, np.concatenate([np.sin(arg), np.cos(arg)], 1), atol=1e-5)
    # W is a parameter but gets no gradient.
    grad = jax.grad(lambda v: proj.apply(v, x).sum())(variables)
    assert float(jnp.abs(grad["params"]["W"]).max()) == 0.0
    nin = layers.NIN(num_units=3)
    h = normal(1, (2, 4, 4, 5))
    out, v = nin.init_with_output(jax.random.PRNGKey(2), h)
    np.testing.assert_allclose(out, h @ v["params"]["W"] + v["params"]["b"], rtol=1e-5, atol=1e-6)


def test_default_init_is_fan_avg_uniform():
    w = layers.default_init(2.0)(jax.random.PRNGKey(0), (3, 3, 64, 32))
    limit = np.sqrt(3 * 2.0 / ((64 * 9 + 32 * 9) / 2))
    assert float(jnp.abs(w).max()) <= limit
    assert float(jnp.abs(w).max()) > 0.99 * limit
    assert float(jnp.abs(layers.default_init(0.0)(jax.random.PRNGKey(0), (4, 4))).max()) < 1e-5


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="progressive"):
        get_model(tiny_config(progressive="sideways")).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.ones((1,)), train=False)
    with pytest.raises(ValueError, match="nonlinearity"):
        get_model(tiny_config(nonlinearity="tanh")).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.ones((1,)), train=False)
