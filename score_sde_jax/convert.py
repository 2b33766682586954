"""Convert an official score_sde checkpoint into a checkpoint of this package.

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
uses them, and ``--mode train`` fine-tunes from them. A checkpoint of that step already in
``DIR`` is never replaced: the command refuses, naming it.

``--out DIR`` receives an orbax (StandardCheckpointer) checkpoint of the tree
``{'params': ..., 'params_ema': ..., 'step': int}``; restore it with
``orbax.checkpoint.StandardCheckpointer().restore(DIR)``. Use ``params_ema`` for sampling and
evaluation: ``model.apply({'params': tree['params_ema']}, x, labels, train=False)``. ``DIR``
must not exist; ``--overwrite`` replaces an earlier output of this command (an orbax checkpoint
folder, nothing else: never ``.``, an empty path or a folder holding other files).
At least one of ``--workdir`` and ``--out`` is needed. Every check runs before anything is read
or written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from score_sde_jax import checkpoints, cli, train_lib

PROG = "python -m score_sde_jax.convert"
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")


def read_official(checkpoint: str, config) -> dict:
    """``{'params', 'params_ema', 'step'}`` from any official checkpoint format (see above)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.endswith((".pth", ".pt", ".npz")):
        return checkpoints.load_official_pytorch(checkpoint, config)
    state = checkpoints.load_official_flax(checkpoint, config)
    return {k: state[k] for k in ("params", "params_ema", "step")}


def check_out(out: str, overwrite: bool = False) -> Path:
    """The absolute ``--out`` path, if writing there deletes nothing it should not: it does not
    exist, or ``overwrite`` and it is an orbax checkpoint folder (an earlier output)."""
    if not str(out).strip() or Path(out).resolve() in (Path.cwd().resolve(), Path("/")):
        raise ValueError(f"--out={out!r} would write over the current folder; name a new folder")
    path = Path(out).absolute()
    if not path.exists():
        return path
    if not overwrite:
        raise FileExistsError(f"--out={out} exists; name a new folder (or --overwrite to replace "
                              "an earlier output of this command)")
    if not path.is_dir() or not any((path / m).exists() for m in _ORBAX_MARKERS):
        raise FileExistsError(f"--out={out} exists and is not an orbax checkpoint written by this "
                              "command; --overwrite replaces only those")
    return path


def check_workdir(workdir: str, step: int) -> None:
    """Refuse when ``workdir`` already holds a checkpoint of ``step`` (a trained run's)."""
    snapshots = checkpoints.step_dirs(workdir)[0]
    if (snapshots / str(step)).exists():
        raise FileExistsError(f"{snapshots / str(step)} exists; converting into --workdir={workdir} "
                              "would replace it (use a new work directory)")


def convert(config, checkpoint: str, out: str | None = None, workdir: str | None = None,
            overwrite: bool = False) -> dict:
    """Read ``checkpoint`` for ``config``'s network; write it to the orbax directory ``out``
    and/or as the checkpoint of the training work directory ``workdir``."""
    if out is None and workdir is None:
        raise ValueError("give --out (an orbax directory) and/or --workdir (a training work directory)")
    out_path = None if out is None else check_out(out, overwrite)
    tree = read_official(checkpoint, config)
    tree["step"] = np.asarray(tree["step"], np.int64)
    if workdir is not None:
        check_workdir(workdir, int(tree["step"]))
    if out_path is not None:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(out_path, tree, force=out_path.exists())  # checked by check_out
        checkpointer.wait_until_finished()
    if workdir is not None:
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
    parser.add_argument("--out", help="output orbax checkpoint directory (must not exist)")
    parser.add_argument("--workdir", help="training work directory to write the checkpoint into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is an earlier output of this command")
    args = parser.parse_args(argv)
    if args.out is None and args.workdir is None:
        parser.error("give --out and/or --workdir")
    config = cli.run_cli(PROG, lambda: cli.load_config(args.config))
    tree = cli.run_cli(PROG, lambda: convert(config, args.checkpoint, args.out, args.workdir,
                                             args.overwrite),
                       expected=(checkpoints.CheckpointError, FileExistsError))
    count = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree["params"]))
    where = " and ".join(p for p in (args.out, args.workdir and f"{args.workdir}/checkpoints") if p)
    print(f"wrote {where}: {config.model.name}, {count:,} parameters, step {int(tree['step'])}")


if __name__ == "__main__":
    main()
