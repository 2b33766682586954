"""Importing official checkpoints: PyTorch state_dicts, official Flax msgpack, the converter CLI."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from score_sde_jax import checkpoints, cli, convert
from score_sde_jax.checkpoints import official as ci
from score_sde_jax.models import get_model

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
NAME = "ncsnpp_ve_continuous_small"
CONFIG_FILE = os.path.join(ROOT, "configs/ve/cifar10_ncsnpp_continuous.py")


@pytest.fixture(scope="module")
def case():
    """(config, official state_dict, imported params) of the small NCSN++ parity model."""
    with open(os.path.join(HERE, "data", f"{NAME}.json")) as f:
        ref = json.load(f)
    config = cli.load_config(CONFIG_FILE)
    for section in ("model", "data"):
        for key, value in ref[section].items():
            config[section][key] = value
    with np.load(os.path.join(HERE, "data", f"{NAME}.npz")) as d:
        state = {k: d[k] for k in d.files if not k.startswith("__")}
    return config, state, ci.from_official_pytorch(state, config)["params"]


def assert_same_tree(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_pytorch_layouts_are_transposed(case):
    config, state, params = case
    np.testing.assert_array_equal(params["Conv_0"]["kernel"],
                                  state["all_modules.3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["Dense_0"]["kernel"], state["all_modules.1.weight"].T)
    np.testing.assert_array_equal(params["ResnetBlockBigGANpp_0"]["GroupNorm_0"]["scale"],
                                  state["all_modules.4.GroupNorm_0.weight"])
    np.testing.assert_array_equal(params["Downsample_0"]["Conv2d_0"]["weight"],
                                  state["all_modules.6.Conv2d_0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["AttnBlockpp_0"]["NIN_2"]["W"],
                                  state["all_modules.8.NIN_2.W"])
    # A DataParallel 'module.' prefix is accepted.
    prefixed = ci.from_official_pytorch({f"module.{k}": v for k, v in state.items()}, config)
    assert_same_tree(prefixed["params"], params)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("all_modules.7.Conv_1.bias"), "missing all_modules.7.Conv_1.bias"),
    (lambda s: s.update({"all_modules.5.Conv_0.weight": np.zeros((32, 32, 1, 1))}),
     r"all_modules.5.Conv_0.weight has shape \(32, 32, 1, 1\)"),
    (lambda s: s.update({"all_modules.4.Extra.weight": np.zeros(3)}),
     "unexpected key all_modules.4.Extra.weight"),
    (lambda s: s.update({"encoder.weight": np.zeros(3)}), "unexpected key 'encoder.weight'"),
    (lambda s: [s.pop(f"all_modules.19.{k}") for k in ("weight", "bias")],
     "state_dict has 19 modules with parameters"),
])
def test_pytorch_mismatch_is_named(case, edit, message):
    config, state, _ = case
    state = dict(state)
    edit(state)
    with pytest.raises(checkpoints.CheckpointMismatchError, match=message):
        ci.from_official_pytorch(state, config)


def test_pytorch_wrong_config_is_named(case):
    config, state, _ = case
    config = config.copy_and_resolve_references()
    config.model.nf = 16
    with pytest.raises(checkpoints.CheckpointMismatchError, match="all_modules.0.W has shape"):
        ci.from_official_pytorch(state, config)


def test_pytorch_ema_shadow_params(case):
    config, state, params = case
    trainable = [k for k in state if k not in ("sigmas", "all_modules.0.W")]
    shadow = [2 * state[k] for k in trainable]
    ema = ci.ema_state_dict(state, {"shadow_params": shadow, "decay": 0.999}, config)
    params_ema = ci.from_official_pytorch(ema, config)["params"]
    doubled = jax.tree_util.tree_map(lambda p: 2 * p, params)
    doubled["GaussianFourierProjection_0"] = params["GaussianFourierProjection_0"]  # fixed
    assert_same_tree(params_ema, doubled)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="EMA holds 3 tensors"):
        ci.ema_state_dict(state, {"shadow_params": shadow[:3]}, config)


def official_flax_bytes(params, params_ema):
    """An official score_sde training State as flax serialises it (optimizer = flax.optim)."""
    state = {
        "step": np.asarray(1300000),
        "optimizer": {"target": params,
                      "state": {"step": np.asarray(7),
                                "param_states": jax.tree_util.tree_map(np.zeros_like, params)}},
        "lr": np.asarray(2e-4),
        "model_state": {},
        "ema_rate": np.asarray(0.999),
        "params_ema": params_ema,
        "rng": np.zeros(2, np.uint32),
    }
    return serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, state))


def test_official_flax_is_identity(case, tmp_path):
    config, _, params = case
    params_ema = jax.tree_util.tree_map(lambda p: p + 1, params)
    raw = official_flax_bytes(params, params_ema)
    variables = ci.from_official_flax(raw, config)
    assert_same_tree(variables["params"], params_ema)
    assert_same_tree(ci.from_official_flax(raw, config, use_ema=False)["params"], params)
    # A checkpoints directory: the latest checkpoint_<n> is read.
    (tmp_path / "checkpoint_3").write_bytes(official_flax_bytes(params, params))
    (tmp_path / "checkpoint_12").write_bytes(raw)
    state = ci.load_official_flax(tmp_path, config)
    assert state["step"] == 1300000
    assert_same_tree(state["params_ema"], params_ema)
    x = jnp.zeros((1, 16, 16, 3))
    y = jax.eval_shape(lambda v: get_model(config).apply(v, x, jnp.ones((1,)), train=False),
                       variables)
    assert y.shape == x.shape


def test_official_flax_mismatch_is_named(case):
    config, _, params = case
    bad = jax.tree_util.tree_map(np.asarray, params)
    bad["ResnetBlockBigGANpp_3"]["Conv_1"]["kernel"] = np.zeros((3, 3, 64, 32), np.float32)
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"params_ema/ResnetBlockBigGANpp_3/Conv_1/kernel has shape"):
        ci.from_official_flax(official_flax_bytes(params, bad), config)
    missing = jax.tree_util.tree_map(np.asarray, params)
    del missing["AttnBlockpp_1"]
    with pytest.raises(checkpoints.CheckpointMismatchError, match="missing params/AttnBlockpp_1/"):
        ci.from_official_flax(official_flax_bytes(missing, params), config)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="no 'optimizer.target' or 'params'"):
        ci.from_official_flax(serialization.msgpack_serialize({"step": 1}), config)


def test_convert_cli_writes_orbax(case, tmp_path, monkeypatch, capsys):
    import orbax.checkpoint as ocp

    config, _, params = case
    config_file = tmp_path / "small_config.py"
    config_file.write_text(
        "from score_sde_jax.cli import load_config\n"
        "import ml_collections, json\n\n"
        "def get_config():\n"
        f"    config = load_config({CONFIG_FILE!r})\n"
        f"    config.model.update(json.loads({config.model.to_json()!r}))\n"
        f"    config.data.update(json.loads({config.data.to_json()!r}))\n"
        "    return config\n")
    npz = os.path.join(HERE, "data", f"{NAME}.npz")
    convert.main(["--config", str(config_file), "--checkpoint", npz, "--out",
                  str(tmp_path / "out")])
    assert "754,915 parameters" in capsys.readouterr().out
    restored = ocp.StandardCheckpointer().restore(str(tmp_path / "out"))
    assert_same_tree(restored["params_ema"], params)
    assert_same_tree(restored["params"], params)
    # Official Flax checkpoint file.
    (tmp_path / "checkpoint_5").write_bytes(official_flax_bytes(params, params))
    convert.main(["--config", str(config_file), "--checkpoint", str(tmp_path / "checkpoint_5"),
                  "--out", str(tmp_path / "out_flax")])
    assert "step 1300000" in capsys.readouterr().out
    # --workdir: a training work directory that eval / sample / training resume read.
    from score_sde_jax import checkpoints as eval_lib
    from score_sde_jax import train_lib

    workdir = tmp_path / "workdir"
    convert.main(["--config", str(config_file), "--checkpoint", npz, "--workdir", str(workdir)])
    assert f"{workdir}/checkpoints" in capsys.readouterr().out
    ema, step = eval_lib.load_ema_params(config, workdir)
    assert_same_tree(ema, params)
    state = train_lib.train_state_from_params(config, params, params, 0)
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(
        train_lib.abstract_train_state(config).opt_state)
    with pytest.raises(SystemExit):
        convert.main(["--config", str(config_file), "--checkpoint", npz])
    # A .pth without PyTorch installed: a clear message.
    pth = tmp_path / "checkpoint_8.pth"
    pth.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a one-line error
        convert.main(["--config", str(config_file), "--checkpoint", str(pth), "--out",
                      str(tmp_path / "out_pth")])
    err = capsys.readouterr().err
    assert err.startswith("python -m score_sde_jax.convert: error: ImportError: reading")
    assert "pip install torch" in err and len(err.splitlines()) == 1
