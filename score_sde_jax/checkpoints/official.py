"""Import the official score_sde checkpoints (PyTorch and JAX/Flax) as this package's variables.

* Official JAX/Flax (yang-song/score_sde): a msgpack file ``checkpoint_<n>`` of the training
  ``State`` (``optimizer.target`` = params, ``params_ema``, ``model_state``, ...). The networks
  here keep the official module and parameter names, so the import is an identity map checked
  against this model's own parameter tree.
* Official PyTorch (yang-song/score_sde_pytorch): a ``state_dict`` whose modules live in the list
  ``all_modules.<i>`` in call order, with the inner names of the Flax code (``Conv_0``,
  ``GroupNorm_1``, ``NIN_2`` ...). ``all_modules.<i>`` is paired with the i-th top-level submodule
  (that has parameters) of this model in call order; convolutions OIHW -> HWIO, linear (out, in)
  -> (in, out), GroupNorm weight -> scale.

Errors name the first key or shape that does not fit the config's network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from score_sde_jax.checkpoints.errors import CheckpointMismatchError
from score_sde_jax.files import read_state_dict
from score_sde_jax.models import utils as mutils

_TORCH_MODULE_RE = re.compile(r"^all_modules\.(\d+)\.(.+)$")
_TORCH_IGNORED = ("sigmas",)  # buffers of the official networks, not parameters
_MAX_LISTED = 12


# ---------------------------------------------------------------------------- model template


def model_template(config) -> tuple[dict, list[str]]:
    """Shapes of ``init_model(config)``'s variables (no arrays are made) and the names of the
    top-level submodules in the order the network first calls them."""
    model = mutils.get_model(config)
    x = jnp.zeros((1, *mutils.data_shape(config)), jnp.float32)
    labels = jnp.ones((1,), jnp.float32)
    order: list[str] = []

    def record(next_fn, args, kwargs, context):
        scope = getattr(context.module, "scope", None)
        path = tuple(scope.path) if scope is not None else ()
        if context.method_name == "__call__" and len(path) == 1 and path[0] not in order:
            order.append(path[0])
        return next_fn(*args, **kwargs)

    def init():
        rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
        return model.init(rngs, x, labels, train=False)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(init)
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes), order


def _flat(tree: Mapping) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _fail(what: str, problems: list[str], hint: str) -> NoReturn:
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise CheckpointMismatchError(f"{what} does not fit the network of this config:\n  "
                                  f"{listed}{more}\n{hint}")


# ---------------------------------------------------------------------------- official PyTorch


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _torch_leaf(flax_path: tuple[str, ...], module: str) -> str:
    """The PyTorch sub-key (inside ``all_modules.<i>``) of a Flax parameter path."""
    parts = list(flax_path)
    if module.startswith("Combine_") and parts[0] == "Conv_0":
        parts[0] = "Conv"  # the PyTorch Combine names its convolution ``Conv``
    parts[-1] = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
    return ".".join(parts)


def _torch_to_flax_array(a: np.ndarray, leaf: str) -> np.ndarray:
    if leaf in ("kernel", "weight") and a.ndim == 4:
        return np.transpose(a, (2, 3, 1, 0))  # OIHW -> HWIO
    if leaf == "kernel" and a.ndim == 2:
        return a.T  # (out, in) -> (in, out)
    return a


def _group_torch_state(state_dict: Mapping[str, Any]) -> tuple[dict[int, dict], list[str]]:
    groups: dict[int, dict[str, Any]] = {}
    unexpected = []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in _TORCH_IGNORED or key.startswith("__"):
            continue
        match = _TORCH_MODULE_RE.match(key)
        if match is None:
            unexpected.append(f"unexpected key {key!r} (expected 'all_modules.<i>.<name>')")
            continue
        groups.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return dict(sorted(groups.items())), unexpected


def _torch_pairs(state_dict: Mapping[str, Any], config):
    """[(torch index, flax module name, {torch sub-key: (flax path, expected shape)})]."""
    shapes, order = model_template(config)
    params = shapes["params"]
    modules = [name for name in order if name in params]
    groups, problems = _group_torch_state(state_dict)
    if len(groups) != len(modules):
        problems.append(
            f"the state_dict has {len(groups)} modules with parameters (all_modules.*), the "
            f"network of config.model.name={config.model.name!r} has {len(modules)}"
        )
    pairs = []
    for index, name in zip(groups, modules, strict=False):
        wanted = {}
        for path, shape in _flat(params[name]).items():
            wanted[_torch_leaf(path, name)] = ((name, *path), shape)
        pairs.append((index, name, wanted))
    return pairs, groups, problems


def from_official_pytorch(state_dict: Mapping[str, Any], config) -> dict:
    """Variables ``{'params': ...}`` of ``get_model(config)`` from an official PyTorch state_dict.

    Args:
      state_dict: key -> array (numpy or torch), as ``model.state_dict()`` of score_sde_pytorch
        (a ``module.`` prefix from DataParallel is dropped; the ``sigmas`` buffer is ignored).
      config: the config the network was built from (same model.* and data.* fields).
    Raises:
      CheckpointMismatchError listing the missing / unexpected keys and shape mismatches.
    """
    pairs, groups, problems = _torch_pairs(state_dict, config)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for index, name, wanted in pairs:
        given = groups[index]
        for sub, (path, shape) in wanted.items():
            key = f"all_modules.{index}.{sub}"
            if sub not in given:
                problems.append(f"missing {key} (for {'/'.join(path)}, shape {shape})")
                continue
            raw = _to_numpy(given[sub])
            arr = _torch_to_flax_array(raw, path[-1])
            if arr.shape != shape:
                problems.append(f"{key} has shape {raw.shape}; {'/'.join(path)} needs {shape}")
                continue
            flat[path] = arr.astype(np.float32)
        for sub in sorted(set(given) - set(wanted)):
            problems.append(f"unexpected key all_modules.{index}.{sub} (paired with {name})")
    if problems:
        _fail("the PyTorch state_dict", problems,
              "Check that the config's model.* and data.* fields are those the checkpoint was "
              "trained with.")
    params = traverse_util.unflatten_dict(flat)
    return {"params": jax.tree_util.tree_map(jnp.asarray, params)}


def _fixed_torch_keys(state_dict: Mapping[str, Any], config) -> set[str]:
    """Parameters without gradient in PyTorch (the Fourier projection), absent from its EMA."""
    pairs, _, _ = _torch_pairs(state_dict, config)
    return {f"all_modules.{i}.{sub}" for i, name, wanted in pairs
            if name.startswith("GaussianFourierProjection") for sub in wanted}


def ema_state_dict(model_state: Mapping[str, Any], ema: Mapping[str, Any], config) -> dict:
    """The model state_dict with the EMA ``shadow_params`` of score_sde_pytorch put in.

    ``shadow_params`` lists the trainable parameters in ``named_parameters()`` order (the
    state_dict order without the ``sigmas`` buffer and the fixed Fourier weights).
    """
    shadow = list(ema["shadow_params"])
    fixed = _fixed_torch_keys(model_state, config)
    stripped = {k[len("module."):] if k.startswith("module.") else k: v
                for k, v in model_state.items()}
    trainable = [k for k in stripped if k not in _TORCH_IGNORED and k not in fixed]
    if len(shadow) != len(trainable):
        raise CheckpointMismatchError(
            f"the EMA holds {len(shadow)} tensors but the model state_dict has {len(trainable)} "
            "trainable parameters")
    out = dict(stripped)
    for key, value in zip(trainable, shadow, strict=True):
        if tuple(_to_numpy(value).shape) != tuple(_to_numpy(out[key]).shape):
            raise CheckpointMismatchError(
                f"EMA tensor for {key} has shape {_to_numpy(value).shape}, the model's "
                f"{_to_numpy(out[key]).shape}")
        out[key] = value
    return out


def load_official_pytorch(path: str, config) -> dict:
    """``{'params', 'params_ema', 'step'}`` from an official ``.pth`` checkpoint or an ``.npz``.

    A ``.pth`` is the training checkpoint of score_sde_pytorch (keys ``model``, ``ema``,
    ``step``) or a bare state_dict, read with torch (``pip install torch``). An ``.npz`` holds one
    state_dict (its arrays are used for both params and params_ema).
    """
    ckpt = read_state_dict(path, hint=" (or save its state_dict as .npz)")
    if str(path).endswith(".npz"):
        params = from_official_pytorch(ckpt, config)["params"]
        return {"params": params, "params_ema": params, "step": 0}
    if "model" not in ckpt:
        params = from_official_pytorch(ckpt, config)["params"]
        return {"params": params, "params_ema": params, "step": 0}
    params = from_official_pytorch(ckpt["model"], config)["params"]
    params_ema = params
    if "ema" in ckpt:
        params_ema = from_official_pytorch(ema_state_dict(ckpt["model"], ckpt["ema"], config),
                                           config)["params"]
    return {"params": params, "params_ema": params_ema, "step": int(ckpt.get("step", 0))}


# ---------------------------------------------------------------------------- official Flax


def _read_bytes(path_or_bytes: str | os.PathLike | bytes) -> bytes:
    if isinstance(path_or_bytes, bytes | bytearray):
        return bytes(path_or_bytes)
    path = os.fspath(path_or_bytes)
    if os.path.isdir(path):  # a checkpoints directory: take the latest checkpoint_<n>
        found = [(int(m.group(1)), f) for f in os.listdir(path)
                 if (m := re.fullmatch(r"checkpoint_(\d+)", f))]
        if not found:
            raise FileNotFoundError(f"no official checkpoint_<n> file in directory {path}")
        path = os.path.join(path, max(found)[1])
    with open(path, "rb") as f:
        return f.read()


def _check_tree(tree: Any, template: Mapping, what: str) -> None:
    if not isinstance(tree, Mapping):
        raise CheckpointMismatchError(f"{what} is not a parameter tree (got {type(tree).__name__})")
    got, want = _flat(tree), _flat(template)
    problems = []
    for path, shape in want.items():
        if path not in got:
            problems.append(f"missing {what}/{'/'.join(path)} (shape {shape})")
        elif tuple(np.shape(got[path])) != tuple(shape):
            problems.append(f"{what}/{'/'.join(path)} has shape {tuple(np.shape(got[path]))}, "
                            f"the network needs {tuple(shape)}")
    problems += [f"unexpected {what}/{'/'.join(p)}" for p in got if p not in want]
    if problems:
        _fail(f"the official Flax checkpoint's {what}", problems,
              "Check that the config's model.* and data.* fields are those the checkpoint was "
              "trained with.")


def load_official_flax(path_or_bytes: str | os.PathLike | bytes, config) -> dict:
    """``{'params', 'params_ema', 'model_state', 'step'}`` of an official Flax checkpoint.

    Reads the msgpack state of score_sde (``optimizer.target`` or ``params``, ``params_ema``,
    ``model_state``); a directory means its latest ``checkpoint_<n>``. Both trees are checked
    against this network's own parameter tree.
    """
    what = "the bytes" if isinstance(path_or_bytes, bytes | bytearray) else os.fspath(path_or_bytes)
    try:
        state = serialization.msgpack_restore(_read_bytes(path_or_bytes))
    except (ValueError, TypeError) as e:  # msgpack's ExtraData / FormatError / StackError
        raise ValueError(f"{what} is not an official Flax checkpoint (a msgpack file): "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} is not an official Flax checkpoint (a msgpack file of a dict); "
                         f"it decodes to a {type(state).__name__}")
    if "params" in state:
        params = state["params"]
    elif "optimizer" in state and "target" in state["optimizer"]:
        params = state["optimizer"]["target"]
    else:
        raise CheckpointMismatchError(
            f"not an official score_sde state: no 'optimizer.target' or 'params' among "
            f"{sorted(state)}")
    if "params_ema" not in state:
        raise CheckpointMismatchError(f"no 'params_ema' among the keys {sorted(state)}")
    shapes, _ = model_template(config)
    _check_tree(params, shapes["params"], "params")
    _check_tree(state["params_ema"], shapes["params"], "params_ema")
    as_jnp = lambda t: jax.tree_util.tree_map(jnp.asarray, t)  # noqa: E731
    return {"params": as_jnp(params), "params_ema": as_jnp(state["params_ema"]),
            "model_state": as_jnp(dict(state.get("model_state") or {})),
            "step": int(np.asarray(state.get("step", 0)))}


def from_official_flax(path_or_bytes: str | os.PathLike | bytes, config,
                       use_ema: bool = True) -> dict:
    """Variables ``{'params': ..., **model_state}`` of ``get_model(config)`` from an official
    Flax checkpoint (file, directory or bytes); the EMA weights unless ``use_ema=False``."""
    state = load_official_flax(path_or_bytes, config)
    params = state["params_ema"] if use_ema else state["params"]
    return {"params": params, **state["model_state"]}
