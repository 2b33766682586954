"""Flax port of the FID Inception-v3 network (TF ``inception-2015-12-05`` as in pytorch-fid).

The network is torchvision's Inception-v3 without the auxiliary head, patched the way the
TensorFlow graph used for FID differs from it (pytorch-fid's ``fid_inception_v3``):
average pools inside the Inception A/C/E1 blocks ignore the zero padding, and the last block
(Mixed_7c) uses a max pool in its pool branch. ``FIDInceptionV3`` returns the 2048-d final
average-pool features (``pool``, TF's ``pool_3``, used by FID and KID) and the classifier
``logits`` (1008 classes for the TF weights, used by the Inception score).

Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` state_dict (needs torch to read)
or an ``.npz`` holding the same keys (convert once with
``python -m score_sde_jax.evaluation.inception convert IN.pth OUT.npz``). Module and parameter
names mirror the torch keys: ``Mixed_5b.branch1x1.conv.weight`` (OIHW) is
``params/Mixed_5b/branch1x1/conv/kernel`` (HWIO); ``bn.weight/bias/running_mean/running_var`` are
``params .../bn/scale, bias`` and ``batch_stats .../bn/mean, var``; ``fc.weight`` (K, 2048) is
``params/fc/kernel`` (2048, K).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from functools import lru_cache, partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_sde_jax import cli
from score_sde_jax.files import read_state_dict

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
INCEPTION_SIZE = 299
MIN_INPUT_SIZE = 75  # smallest input the un-padded stem and strided blocks accept
PROG = "python -m score_sde_jax.evaluation.inception"


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, NHWC."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), strides=(self.stride, self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool that, like TF, averages only over the unpadded pixels."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
    pad = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nn.max_pool(x, (3, 3), (stride, stride), padding=pad)


def _chain(x: jax.Array, convs: list[BasicConv]) -> jax.Array:
    for conv in convs:
        x = conv(x)
    return x


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = _chain(x, [BasicConv(48, name="branch5x5_1"),
                        BasicConv(64, 5, padding=2, name="branch5x5_2")])
        b3 = _chain(x, [BasicConv(64, name="branch3x3dbl_1"),
                        BasicConv(96, 3, padding=1, name="branch3x3dbl_2"),
                        BasicConv(96, 3, padding=1, name="branch3x3dbl_3")])
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
        bd = _chain(x, [BasicConv(64, name="branch3x3dbl_1"),
                        BasicConv(96, 3, padding=1, name="branch3x3dbl_2"),
                        BasicConv(96, 3, stride=2, name="branch3x3dbl_3")])
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = _chain(x, [BasicConv(c7, name="branch7x7_1"),
                        BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2"),
                        BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")])
        bd = _chain(x, [BasicConv(c7, name="branch7x7dbl_1"),
                        BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2"),
                        BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3"),
                        BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4"),
                        BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")])
        bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = _chain(x, [BasicConv(192, name="branch3x3_1"),
                        BasicConv(320, 3, stride=2, name="branch3x3_2")])
        b7 = _chain(x, [BasicConv(192, name="branch7x7x3_1"),
                        BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2"),
                        BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3"),
                        BasicConv(192, 3, stride=2, name="branch7x7x3_4")])
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
    """Inception E block; ``max_pool`` selects the FID graph's max pool (Mixed_7c)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        def split(h, prefix):
            return jnp.concatenate(
                [BasicConv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(h),
                 BasicConv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(h)], axis=-1)

        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = split(BasicConv(384, name="branch3x3_1")(x), "branch3x3_2")
        bd = _chain(x, [BasicConv(448, name="branch3x3dbl_1"),
                        BasicConv(384, 3, padding=1, name="branch3x3dbl_2")])
        bd = split(bd, "branch3x3dbl_3")
        pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images are taken to be in [0, 1].

    A single channel is repeated to three. Shape (B, H, W, C) with C in {1, 3}.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, 1 or 3), got shape {images.shape}")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x


class FIDInceptionV3(nn.Module):
    """FID Inception-v3. Input (B, H, W, C): uint8 in [0, 255] or float in [0, 1], C in {1, 3}.

    With ``resize_input`` the images are bilinearly resized (half-pixel centres, no
    anti-aliasing, as torch's ``interpolate(..., align_corners=False)``) to 299x299, then mapped
    to [-1, 1] by ``2x - 1``. Returns ``{'pool': (B, 2048), 'logits': (B, num_classes)}``.
    """

    num_classes: int = 1008
    resize_input: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        x = to_unit_range(images)
        if self.resize_input:
            b, _, _, c = x.shape
            x = jax.image.resize(x, (b, INCEPTION_SIZE, INCEPTION_SIZE, c), "bilinear",
                                 antialias=False)
        x = 2.0 * x - 1.0
        x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, stride=2)
        x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, stride=2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(pool)
        return {"pool": pool, "logits": logits}


# ----------------------------------------------------------------------------- weights


def _init_input() -> jax.Array:
    return jnp.zeros((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)


@lru_cache(maxsize=4)
def inception_shapes(num_classes: int = 1008) -> dict:
    """The variables' tree of ``jax.ShapeDtypeStruct`` (no computation)."""
    model = FIDInceptionV3(num_classes=num_classes, resize_input=False)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), _init_input())


_LEAF_TO_TORCH = {
    ("params", "conv", "kernel"): "weight",
    ("params", "fc", "kernel"): "weight",
    ("params", "fc", "bias"): "bias",
    ("params", "bn", "scale"): "weight",
    ("params", "bn", "bias"): "bias",
    ("batch_stats", "bn", "mean"): "running_mean",
    ("batch_stats", "bn", "var"): "running_var",
}


def _torch_key(path: tuple[str, ...]) -> str:
    """Flax variable path ('params', *modules, leaf) -> pytorch-fid state_dict key."""
    leaf = _LEAF_TO_TORCH[(path[0], path[-2], path[-1])]
    return ".".join((*path[1:-1], leaf))


def _to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    return value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)  # (in,out) / HWIO->OIHW


def _to_flax_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    return value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)  # (out,in) / OIHW->HWIO


def variables_to_state_dict(variables: Mapping) -> dict[str, np.ndarray]:
    """Flax variables -> pytorch-fid state_dict layout (float32 NumPy arrays)."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
    return {_torch_key(p): np.asarray(_to_torch_layout(p, np.asarray(v)), np.float32)
            for p, v in flat.items()}


def state_dict_shapes(num_classes: int = 1008) -> dict[str, tuple[int, ...]]:
    """pytorch-fid state_dict key -> shape (torch layout) of the FID Inception-v3."""
    flat = traverse_util.flatten_dict(inception_shapes(num_classes))
    return {_torch_key(p): _to_torch_layout(p, np.empty(s.shape, np.bool_)).shape
            for p, s in flat.items()}


def random_state_dict(seed: int = 0, num_classes: int = 1008) -> dict[str, np.ndarray]:
    """A reproducible random FID Inception state_dict (for tests and benchmarks).

    Keys are filled in sorted order from ``np.random.default_rng(seed)``: conv and fc weights
    ~ N(0, 2 / fan_in), BatchNorm weight ~ 1 + 0.1 N, bias, running mean ~ 0.1 N, running var
    ~ U(0.5, 1.5), so that activations stay of order one through the whole network.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in sorted(state_dict_shapes(num_classes).items()):
        if key.endswith("weight") and len(shape) > 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("bn.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        out[key] = value.astype(np.float32)
    return out


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray]) -> dict:
    """pytorch-fid state_dict (NumPy arrays) -> Flax variables {'params', 'batch_stats'}.

    The number of classes is read from ``fc.weight``; every other key and shape must match the
    FID Inception-v3 (``num_batches_tracked`` and ``AuxLogits.*`` entries are ignored).
    """
    if "fc.weight" not in state_dict:
        raise ValueError("not an Inception-v3 state_dict: key 'fc.weight' is missing")
    num_classes = int(np.shape(state_dict["fc.weight"])[0])
    flat_shapes = traverse_util.flatten_dict(inception_shapes(num_classes))
    problems, flat = [], {}
    for path, spec in flat_shapes.items():
        key = _torch_key(path)
        if key not in state_dict:
            problems.append(f"missing {key}")
            continue
        value = _to_flax_layout(path, np.asarray(state_dict[key], np.float32))
        if value.shape != spec.shape:
            problems.append(f"{key}: shape {np.shape(state_dict[key])} does not fit {spec.shape}")
        flat[path] = jnp.asarray(value)
    known = {_torch_key(p) for p in flat_shapes}
    extra = [k for k in state_dict if k not in known
             and not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits.")]
    problems += [f"unexpected {k}" for k in extra]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8
                                            else "")
        raise ValueError(f"state_dict does not match the FID Inception-v3: {shown}")
    return traverse_util.unflatten_dict(flat)


_HOW_TO_GET_WEIGHTS = (
    f"Download pytorch-fid's weights from {FID_WEIGHTS_URL} and point "
    "config.eval.inception_path at the .pth file (reading it needs torch), or convert it once, "
    "on a machine with torch, to a torch-free .npz with: python -m "
    "score_sde_jax.evaluation.inception convert pt_inception-2015-12-05-6726825d.pth "
    "fid_inception.npz"
)


def weights_file(path: str | Path | None) -> Path:
    """``path`` checked to name an existing ``.pth`` / ``.npz`` file (nothing is read: cheap
    enough to run before any work); a ValueError / FileNotFoundError saying how to get it."""
    if not path:
        raise ValueError(f"config.eval.inception_path is not set. {_HOW_TO_GET_WEIGHTS}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at '{path}' "
                                f"(config.eval.inception_path). {_HOW_TO_GET_WEIGHTS}")
    if path.suffix not in (".npz", ".pth", ".pt"):
        raise ValueError(f"'{path}': expected a .pth or .npz FID Inception state_dict")
    return path


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a pytorch-fid state_dict from a ``.pth`` (needs torch) or ``.npz`` file."""
    path = weights_file(path)
    return read_state_dict(path, hint="; or convert it to .npz on a machine with torch: python -m "
                           f"score_sde_jax.evaluation.inception convert {path.name} fid_inception.npz")


def load_inception_params(path: str | Path) -> dict:
    """Load FID Inception variables from a pytorch-fid ``.pth`` or ``.npz`` state_dict."""
    return state_dict_to_variables(load_state_dict(path))


def load_inception_from_config(config) -> dict:
    """Load the FID Inception variables named by ``config.eval.inception_path``."""
    return load_inception_params(weights_file(config.eval.get("inception_path", None)))


def convert_to_npz(src: str | Path, dst: str | Path) -> None:
    """Write the state_dict in ``src`` (.pth or .npz) as a torch-free ``.npz`` after checking it."""
    state = load_state_dict(src)
    state_dict_to_variables(state)  # validates keys and shapes
    np.savez(dst, **{k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})


@partial(jax.jit, static_argnames=("num_classes",))
def _apply(variables: dict, images: jax.Array, num_classes: int) -> dict[str, jax.Array]:
    return FIDInceptionV3(num_classes=num_classes).apply(variables, images)


def num_classes_of(variables: Mapping) -> int:
    return int(variables["params"]["fc"]["kernel"].shape[-1])


def inception_apply(variables: Mapping, images: jax.Array) -> dict[str, jax.Array]:
    """Jitted forward pass: images (B, H, W, C) -> {'pool': (B, 2048), 'logits': (B, K)}."""
    return _apply(variables, images, num_classes_of(variables))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="pytorch-fid .pth -> torch-free .npz")
    conv.add_argument("src")
    conv.add_argument("dst")
    args = parser.parse_args(argv)
    cli.run_cli(PROG, lambda: convert_to_npz(args.src, args.dst))
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
