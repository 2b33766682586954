"""Train, evaluate or sample a score-based model.

    python main.py --config configs/vp_cifar10.py --workdir runs/cifar10 --mode train
    python main.py --config configs/digits.py --config.training.batch_size=32 --workdir runs/d --mode train
    python main.py --config configs/digits.py --workdir runs/d --mode eval --eval_folder eval
    python main.py --config configs/digits.py --workdir runs/d --mode sample --num_samples 64 \\
        --config.sampling.method=ode
    python main.py --config configs/digits.py --workdir runs/d --mode encode --images digits.npz
    python main.py --config configs/digits.py --workdir runs/d --mode interpolate \\
        --images a.png,b.png --num 9

Any config key can be overridden with ``--config.<section>.<key>=value``. Errors in the flags,
the config or the checkpoints are reported in one line on stderr (exit status 1); set
``SCORE_SDE_JAX_TRACEBACK=1`` to see the traceback instead.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from score_sde_jax import cli

FLAGS = flags.FLAGS
MODES = ("train", "eval", "sample", "encode", "interpolate")

config_flags.DEFINE_config_file("config", None, "Experiment config file (a get_config() module).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, samples.")
flags.DEFINE_enum("mode", None, list(MODES), "Running mode: train, eval, sample, encode (images "
                  "to latents of the probability-flow ODE) or interpolate (between two images).")
flags.DEFINE_string("eval_folder", "eval", "Folder (under workdir) for evaluation results.")
flags.DEFINE_integer("num_samples", None, "sample mode: number of samples (default "
                     "config.eval.batch_size; inpainting / colorization of one image: that many "
                     "draws of it).", lower_bound=1)
flags.DEFINE_string("seeds", None, "sample mode: regenerate these samples of the evaluation "
                    "by number, e.g. 0-63 or 5,17 (instead of --num_samples).")
flags.DEFINE_integer("step", None, "sample mode: checkpoint step (default: the latest).")
flags.DEFINE_string("sample_dir", None, "sample, encode, interpolate modes: output folder "
                    "(default workdir/samples; workdir/latents for encode and interpolate).")
flags.DEFINE_string("images", None, "encode / interpolate modes: comma-separated image files "
                    "(PNG/npz/npy) or folders of them.")
flags.DEFINE_integer("num", 9, "interpolate mode: number of images on the path.")
flags.DEFINE_enum("interpolation", "slerp", ["slerp", "linear"], "interpolate mode: the path "
                  "between the two latents.")
flags.DEFINE_string("inpaint_image", None, "sample mode: inpaint this image (PNG/npz; with "
                    "--inpaint_mask, 1 = known pixel).")
flags.DEFINE_string("inpaint_mask", None, "sample mode: mask for --inpaint_image (PNG/npz).")
flags.DEFINE_string("colorize_image", None, "sample mode: colorize this grayscale image (PNG/npz).")
flags.DEFINE_integer("class_label", None, "sample mode: sample this class: with classifier-free "
                     "guidance (config.sampling.cfg_scale) for a label-conditional model, or with "
                     "the classifier of --classifier_workdir.")
flags.DEFINE_string("classifier_workdir", None, "sample mode: workdir of the noise-conditional "
                    "classifier used with --class_label.")
config_flags.DEFINE_config_file("classifier_config", None, "sample mode: the classifier's config "
                                "(default: read from its checkpoint).")
flags.DEFINE_float("guidance_scale", 1.0, "sample mode: scale of the classifier gradient.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host "
                  "GPU/CPU clusters; Cloud TPU pods and SLURM are detected automatically, else "
                  "set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID).")
flags.DEFINE_bool("compilation_cache", True, "Keep compiled XLA programs on disk and reuse them "
                  "in later runs (JAX's persistent compilation cache).")
flags.DEFINE_string("compilation_cache_dir", None, "Folder of the compilation cache (default "
                    "$SCORE_SDE_JAX_CACHE or ~/.cache/score_sde_jax/jax).")
flags.DEFINE_bool("keep_host_memory", True, "Keep freed host memory for reuse (glibc malloc: "
                  "no mmap per large block, no trimming; single-device CPU computations run on "
                  "the calling thread): XLA:CPU allocates each step's temporaries afresh, and "
                  "otherwise page-faults them in every step (CIFAR-10 DDPM++ on one core: 3.68 "
                  "-> 3.20 s a step). The process keeps its peak host memory.")
flags.mark_flags_as_required(["config", "workdir", "mode"])
PROG = "main.py"


def _die(message: object) -> None:
    cli.die(PROG, message)


def _override_error(e: Exception, argv: list[str]) -> str:
    """A one-line message for a --config.* override of a key the config does not have."""
    inner = e.args[0] if e.args and isinstance(e.args[0], BaseException) else e
    text = str(inner.args[0] if inner.args else inner)
    key = re.search(r"'([^']+)'", text)
    key = key.group(1) if key else text.splitlines()[0]
    culprit = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    where = f" in {culprit[0]}" if culprit else ""
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return f"unknown config key {key!r}{where}" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")


def _config_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _scalar_for_tuple(argv: list[str], configs: dict) -> str | None:
    """The first ``--config.a.b=3`` whose key holds a tuple but whose value is a single
    number or string (ml_collections silently turns it into ``(3,)``), as an error message."""
    for i, arg in enumerate(argv):
        name, eq, text = arg[2:].partition("=")
        prefix, _, key = name.partition(".")
        if not arg.startswith("--") or prefix not in configs or not key:
            continue
        if not eq:  # --config.a.b 3
            if i + 1 >= len(argv):
                continue
            arg, text = f"{arg}={argv[i + 1]}", argv[i + 1]
        try:
            value = configs[prefix]
            for part in key.split("."):
                value = value[part]
        except (KeyError, AttributeError, TypeError):
            continue
        try:
            given = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            given = text
        if isinstance(value, tuple) and not isinstance(given, tuple | list):
            return (f"{arg}: {prefix}.{key} is a tuple (now {value}); write "
                    f"--{prefix}.{key}='({text.strip()},)' for a single element")
    return None


def _parse(argv: list[str]) -> None:
    try:
        FLAGS(argv)
        FLAGS.config.get("training")  # a config file that failed to load raises here
    except flags.Error as e:
        _die(e)
    except (AttributeError, KeyError) as e:
        path = _config_path(argv)
        if "has no attribute 'get_config'" in str(e):
            _die(f"--config={path} has no get_config() function (a config file defines "
                 "get_config() returning an ml_collections.ConfigDict)")
        _die(_override_error(e, argv))
    except Exception as e:  # noqa: BLE001 -- a config file that fails to load
        path = _config_path(argv)
        if not os.path.isfile(path):
            _die(f"--config={path}: no such config file")
        _die(f"--config={path} cannot be loaded: {type(e).__name__}: {e}")
    configs = {"config": FLAGS.config}
    if FLAGS.classifier_config is not None:
        configs["classifier_config"] = FLAGS.classifier_config
    problem = _scalar_for_tuple(argv, configs)
    if problem:
        _die(problem)


def check_flags(workdir: str, mode: str) -> None:
    """The checks of the command line and of the output folder that need no JAX, made before
    it is imported (~1.5 s): a folder that cannot be written, --images missing, sample-mode
    flags that exclude or need each other."""
    default_out = os.path.join(workdir, "samples" if mode == "sample" else "latents")
    cli.check_run_dirs(workdir, {"train": workdir, "eval": os.path.join(workdir, FLAGS.eval_folder)}
                       .get(mode, FLAGS.sample_dir or default_out))
    if mode in ("encode", "interpolate") and not FLAGS.images:
        raise ValueError(f"--mode={mode} needs --images")
    if mode != "sample":
        return
    if FLAGS.seeds is not None and FLAGS.num_samples is not None:
        raise ValueError("--seeds and --num_samples exclude each other (--seeds names the "
                         "samples to draw, so it also sets their number)")
    chosen = [name for name in ("inpaint_image", "colorize_image", "class_label")
              if getattr(FLAGS, name) is not None]
    if len(chosen) > 1:
        raise ValueError(f"choose one of --inpaint_image, --colorize_image, --class_label; got {chosen}")
    if FLAGS.inpaint_mask is not None and FLAGS.inpaint_image is None:
        raise ValueError("--inpaint_mask needs --inpaint_image")
    if FLAGS.inpaint_image is not None and FLAGS.inpaint_mask is None:
        raise ValueError("--inpaint_image needs --inpaint_mask")


def run(config, workdir: str, mode: str) -> None:
    """The mode's work, after :func:`check_flags`."""
    from score_sde_jax import evaluation, logging_utils

    if FLAGS.distributed:
        import jax

        jax.distributed.initialize()
    logging_utils.setup_logging()
    if mode == "train":
        _train(config, workdir)
    elif mode == "eval":
        evaluation.evaluate(config, workdir, FLAGS.eval_folder)
    elif mode in ("encode", "interpolate"):
        print("wrote " + " and ".join(str(p) for p in _latents(config, workdir, mode).values() if p))
    else:
        print(_wrote(_sample(config, workdir)))


def _wrote(paths: dict) -> str:
    """``wrote a.npz and a.png: 16 samples, 1000 NFE per batch`` for the files of a sample run."""
    import numpy as np

    written = [str(p) for p in paths.values() if p is not None]
    with np.load(paths["npz"]) as data:
        count = len(data["seeds" if "seeds" in data.files else "samples"])  # not all samples
        nfe = sorted({int(n) for n in np.ravel(data["nfe"])}) if "nfe" in data.files else []
    what = f"{count} samples" + (f", {'/'.join(map(str, nfe))} NFE per batch" if nfe else "")
    return f"wrote {' and '.join(written)}: {what}"


def _train(config, workdir: str) -> None:
    """Train; after SIGTERM / SIGINT log the checkpoint and the resume command, and exit
    128 + signal (143 for SIGTERM, 130 for SIGINT; see README, "Training")."""
    from score_sde_jax import preemption, run_lib

    try:
        run_lib.train(config, workdir)
    except preemption.TrainingStopped as e:
        logging.warning("%s; resume with: %s", e, shlex.join(["python", *sys.argv]))
        sys.exit(e.exit_code)


def _sample(config, workdir: str) -> dict:
    """Plain, inpainting, colorization or class-conditional sampling, as the flags ask (their
    combination checked by :func:`check_flags`)."""
    from score_sde_jax import inference

    num = FLAGS.num_samples or int(config.eval.batch_size)  # num_samples >= 1 (lower_bound)
    out = FLAGS.sample_dir or os.path.join(workdir, "samples")
    if FLAGS.inpaint_image is not None:
        return inference.inpaint(config, workdir, FLAGS.inpaint_image, FLAGS.inpaint_mask, out,
                                        step=FLAGS.step, num_samples=FLAGS.num_samples)
    if FLAGS.colorize_image is not None:
        return inference.colorize(config, workdir, FLAGS.colorize_image, out, step=FLAGS.step,
                                         num_samples=FLAGS.num_samples)
    if FLAGS.class_label is not None and FLAGS.classifier_workdir is not None:
        return inference.sample_class(
            config, workdir, FLAGS.classifier_workdir, FLAGS.class_label, FLAGS.guidance_scale, out,
            num_samples=num, classifier_config=FLAGS.classifier_config, step=FLAGS.step)
    if FLAGS.seeds is not None:
        return inference.sample(config, workdir, None, out, step=FLAGS.step,
                                seeds=inference.parse_seeds(FLAGS.seeds), class_label=FLAGS.class_label)
    return inference.sample(config, workdir, num, out, step=FLAGS.step, class_label=FLAGS.class_label)


def _latents(config, workdir: str, mode: str) -> dict:
    """Encode images, or interpolate between two (score_sde_jax/inference/latents.py)."""
    from score_sde_jax import inference

    out = FLAGS.sample_dir or os.path.join(workdir, "latents")
    if mode == "encode":
        return inference.encode(config, workdir, FLAGS.images, out, step=FLAGS.step)
    return inference.interpolate(config, workdir, FLAGS.images, FLAGS.num, out, step=FLAGS.step,
                                   method=FLAGS.interpolation)


def main(argv: list[str] | None = None) -> None:
    _parse(sys.argv if argv is None else argv)
    cli.run_cli(PROG, lambda: check_flags(FLAGS.workdir, FLAGS.mode))
    if FLAGS.keep_host_memory:
        cli.keep_freed_host_memory()
    if FLAGS.compilation_cache:
        cli.setup_compilation_cache(FLAGS.compilation_cache_dir)
    from score_sde_jax import checkpoints, preemption, run_lib

    cli.run_cli(PROG, lambda: run(FLAGS.config, FLAGS.workdir, FLAGS.mode),
                expected=(checkpoints.CheckpointError, run_lib.NonFiniteLossError,
                          preemption.WorkdirLockedError),
                interrupted=("interrupted at once (nothing saved since the last checkpoint)"
                             if FLAGS.mode == "train" else "interrupted"))


if __name__ == "__main__":
    main()
