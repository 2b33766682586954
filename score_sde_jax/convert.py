"""Convert an official score_sde checkpoint into an orbax checkpoint of this package.

    python -m score_sde_jax.convert --config configs/ve/cifar10_ncsnpp_continuous.py \
        --checkpoint checkpoint_24.pth --out converted/ve_ncsnpp

``--checkpoint`` is one of
  * ``*.pth``: a score_sde_pytorch training checkpoint (``model``, ``ema``, ``step``) or a bare
    state_dict; needs PyTorch (``pip install torch``);
  * ``*.npz``: a PyTorch state_dict saved with numpy (used for both params and params_ema);
  * anything else: an official JAX/Flax checkpoint file ``checkpoint_<n>`` (msgpack) or a
    directory holding such files (the latest is used).

``--workdir DIR`` makes ``DIR`` a training work directory holding the imported weights as the
checkpoint of their official step (fresh Adam moments): ``main.py --mode sample|eval --workdir DIR``
uses them, and ``--mode train`` fine-tunes from them.

``--out DIR`` receives an orbax (StandardCheckpointer) checkpoint of the tree
``{'params': ..., 'params_ema': ..., 'step': int}``; restore it with
``orbax.checkpoint.StandardCheckpointer().restore(DIR)``. Use ``params_ema`` for sampling and
evaluation: ``model.apply({'params': tree['params_ema']}, x, labels, train=False)``.
At least one of ``--workdir`` and ``--out`` is needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import jax
import numpy as np

from score_sde_jax import checkpoints_import, cli

PROG = "python -m score_sde_jax.convert"


def load_config(path: str):
    """``get_config()`` of a config file; the folder above its ``configs/`` goes on sys.path."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    parts = path.split(os.sep)
    if "configs" in parts:
        root = os.sep.join(parts[: len(parts) - 1 - parts[::-1].index("configs")])
        if root not in sys.path:
            sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location("_converted_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config()")
    return module.get_config()


def read_official(checkpoint: str, config) -> dict:
    """``{'params', 'params_ema', 'step'}`` from any official checkpoint format (see above)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.endswith((".pth", ".pt", ".npz")):
        return checkpoints_import.load_official_pytorch(checkpoint, config)
    state = checkpoints_import.load_official_flax(checkpoint, config)
    return {k: state[k] for k in ("params", "params_ema", "step")}


def convert(config, checkpoint: str, out: str | None = None, workdir: str | None = None) -> dict:
    """Read ``checkpoint`` for ``config``'s network; write it to the orbax directory ``out``
    and/or as the checkpoint of the training work directory ``workdir``."""
    import orbax.checkpoint as ocp

    if out is None and workdir is None:
        raise ValueError("give --out (an orbax directory) and/or --workdir (a training work directory)")
    tree = read_official(checkpoint, config)
    tree["step"] = np.asarray(tree["step"], np.int64)
    if out is not None:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(out), tree, force=True)
        checkpointer.wait_until_finished()
    if workdir is not None:
        from score_sde_jax import checkpoints, train_lib

        state = train_lib.train_state_from_params(config, tree["params"], tree["params_ema"],
                                                  int(tree["step"]))
        saver = checkpoints.Checkpointer(checkpoints.step_dirs(workdir)[0])
        saver.save(state, config)
        saver.close()
    return tree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file, e.g. configs/ve/....py")
    parser.add_argument("--checkpoint", required=True, help=".pth, .npz or official Flax file")
    parser.add_argument("--out", help="output orbax checkpoint directory")
    parser.add_argument("--workdir", help="training work directory to write the checkpoint into")
    args = parser.parse_args(argv)
    if args.out is None and args.workdir is None:
        parser.error("give --out and/or --workdir")
    config = cli.run_cli(PROG, lambda: load_config(args.config))
    tree = cli.run_cli(PROG, lambda: convert(config, args.checkpoint, args.out, args.workdir),
                       expected=(checkpoints_import.CheckpointMismatchError,))
    count = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree["params"]))
    where = " and ".join(p for p in (args.out, args.workdir and f"{args.workdir}/checkpoints") if p)
    print(f"wrote {where}: {config.model.name}, {count:,} parameters, step {int(tree['step'])}")


if __name__ == "__main__":
    main()
