"""``main.py --mode sample`` for controllable generation: inpaint, colorize, sample a class.

The maths is in :mod:`score_sde_jax.controllable_generation`; this module reads the inputs
(:func:`common.load_images`, :func:`common.load_mask`) and the checkpoints, and runs the
samplers through the one mesh loop of :mod:`.common`: the EMA parameters of the latest
checkpoint in ``workdir`` (or ``step``), ``config.sampling``'s predictor, corrector, snr,
``n_steps_each``, ``probability_flow`` and ``noise_removal``, global batches of at most
``config.eval.batch_size`` over every device of every process, input i drawing its noise from
its own key ``fold_in(rng, i)`` (so the outputs do not depend on the device count; the Langevin
corrector's step size, a batch mean, depends on the batch).
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np

from score_sde_jax import checkpoints, datasets, files, sampling, sde_lib, sharding
from score_sde_jax import controllable_generation as cg
from score_sde_jax.classifier_lib import classifier_logp_fn
from score_sde_jax.eval_lib import as_variables
from score_sde_jax.inference import common
from score_sde_jax.models import utils as mutils


def _draws(images: np.ndarray, num_samples: int | None, path) -> np.ndarray:
    """The inputs repeated to ``num_samples`` draws: one input is repeated, N inputs need
    ``num_samples`` None or N."""
    if num_samples is None or num_samples == len(images):
        return images
    if len(images) != 1:
        raise ValueError(f"--num_samples={num_samples} but {path} holds {len(images)} inputs; "
                         "give one input (drawn num_samples times) or leave --num_samples out")
    return np.repeat(images, int(num_samples), axis=0)


def _run(model: common.Model, make, arrays: tuple, salt: int, weights: tuple | None = None) -> np.ndarray:
    """``make(batch) -> fn(*weights, keys, *rows)`` run over ``arrays`` (N rows each) in the mesh
    loop with the key ``fold_in(PRNGKey(seed + salt), step)``; returns (N, *D) in model space."""
    n = len(arrays[0])
    batch = common.batch_size(model.config, model.mesh, n)
    weights = (model.params,) if weights is None else weights
    rng = jax.random.fold_in(jax.random.PRNGKey(int(model.config.seed) + salt), model.step)
    outs = common.run_batches(common.keyed(make(batch), len(weights)), model,
                              common.index_batches(range(n), batch), rng, weights=weights,
                              arrays=arrays)
    return np.concatenate(outs)[:n]


def inpaint(config, workdir: str | Path, image_path: str | Path, mask_path: str | Path,
            out_dir: str | Path, step: int | None = None,
            num_samples: int | None = None) -> dict[str, Path]:
    """Inpaint the images of ``image_path`` where ``mask_path`` is 0 (PC inpainter); a single
    image is inpainted ``num_samples`` times (independent draws) when that is given.

    Writes ``inpainted.{png,npz}`` and ``inpaint_input.png`` (the known pixels, unknown black).
    """
    images = _draws(common.load_images(image_path, config), num_samples, image_path)
    mask = common.load_mask(mask_path, images.shape)
    model = common.load_model(config, workdir, step)
    scaler, pc = datasets.get_data_scaler(config), sampling.settings(config).pc_kwargs()

    def make(batch):
        fn = cg.get_pc_inpainter(model.sde, (batch, *images.shape[1:]), eps=model.eps, **pc)
        return lambda p, r, y, m: fn(r, model.build(p), scaler(y), m)

    x = _run(model, make, (images, mask), salt=3)
    if not mutils.is_flat(config) and sharding.is_main_process():
        files.save_image_grid(images * mask, Path(out_dir) / "inpaint_input.png")
    return common.write(config, x, Path(out_dir) / "inpainted", "inpainted", mask=mask)


def colorize(config, workdir: str | Path, image_path: str | Path, out_dir: str | Path,
             step: int | None = None, num_samples: int | None = None) -> dict[str, Path]:
    """Colorize grey images (an RGB input is reduced to its grey level (R+G+B)/3); a single
    image is colorized ``num_samples`` times when that is given.

    Needs an RGB model. Writes ``colorized.{png,npz}`` and ``colorize_input.png``.
    """
    if mutils.is_flat(config) or mutils.data_shape(config)[-1] != 3:
        raise ValueError(f"colorization needs a model of RGB images; config.data gives data shape "
                         f"{mutils.data_shape(config)}")
    images = _draws(common.load_images(image_path, config), num_samples, image_path)
    gray = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    model = common.load_model(config, workdir, step)
    scaler, pc = datasets.get_data_scaler(config), sampling.settings(config).pc_kwargs()

    def make(batch):
        fn = cg.get_pc_colorizer(model.sde, (batch, *images.shape[1:]), eps=model.eps, **pc)
        return lambda p, r, g: fn(r, model.build(p), scaler(g))

    x = _run(model, make, (gray,), salt=4)
    if sharding.is_main_process():
        files.save_image_grid(gray, Path(out_dir) / "colorize_input.png")
    return common.write(config, x, Path(out_dir) / "colorized", "colorized")


def classifier_config_from_workdir(classifier_workdir: str | Path) -> ml_collections.ConfigDict:
    """The training config stored in the latest checkpoint of ``classifier_workdir``."""
    saved = checkpoints.saved_config(classifier_workdir)
    if not saved:
        raise FileNotFoundError(f"no checkpoint with a stored config in {classifier_workdir}; pass "
                                "the classifier's config explicitly (--classifier_config)")
    return ml_collections.ConfigDict(saved)


def _check_classifier(config, clf_config, label: int) -> None:
    if clf_config.training.get("task", "score") != "classifier":
        raise ValueError("the classifier's config has config.training.task="
                         f"{clf_config.training.get('task', 'score')!r}, not 'classifier'")
    keys = ("sigma_min", "sigma_max") if str(config.training.sde).lower() == "vesde" \
        else ("beta_min", "beta_max")
    mine = [str(config.training.sde).lower()] + [float(config.model[k]) for k in keys]
    theirs = [str(clf_config.training.sde).lower()] + [float(clf_config.model.get(k, -1)) for k in keys]
    if mine != theirs:
        raise ValueError(f"the classifier was trained for SDE {theirs} but the score model uses {mine} "
                         f"(config.training.sde, config.model.{keys[0]}, {keys[1]})")
    if mutils.data_shape(clf_config) != mutils.data_shape(config) or \
            bool(clf_config.data.centered) != bool(config.data.centered):
        raise ValueError(f"the classifier takes data of shape {mutils.data_shape(clf_config)} "
                         f"(centered={clf_config.data.centered}); the score model's is "
                         f"{mutils.data_shape(config)} (centered={config.data.centered})")
    n = int(clf_config.model.num_classes)
    if not 0 <= int(label) < n:
        raise ValueError(f"label {label} is not a class of the classifier (0 .. {n - 1})")


def sample_class(config, workdir: str | Path, classifier_workdir: str | Path, label: int,
                 scale: float, out_dir: str | Path, num_samples: int | None = None,
                 classifier_config=None, step: int | None = None,
                 classifier_step: int | None = None) -> dict[str, Path]:
    """``num_samples`` (default ``config.eval.batch_size``) samples of class ``label`` with
    classifier guidance s + scale ∇ log p_t(label | x) (PC, or the PF-ODE when
    ``config.sampling.method == 'ode'``). The classifier's config is read from its checkpoint
    unless given. Writes ``class_{label}_samples.{png,npz}``."""
    clf_config = classifier_config or classifier_config_from_workdir(classifier_workdir)
    _check_classifier(config, clf_config, label)
    model = common.load_model(config, workdir, step)
    clf_params, _ = checkpoints.load_ema_params(clf_config, classifier_workdir, classifier_step)
    clf_sde, _ = sde_lib.get_sde(clf_config)
    classifier = mutils.get_model(clf_config)
    n = int(num_samples or config.eval.batch_size)
    shape, s = mutils.data_shape(config), sampling.settings(config)

    def make(batch):
        if s.method == "ode":
            fn = cg.get_ode_conditional_sampler(model.sde, (batch, *shape), eps=model.eps,
                                                **s.ode_kwargs())
        else:
            fn = cg.get_pc_conditional_sampler(model.sde, (batch, *shape), eps=model.eps,
                                               **s.pc_kwargs())

        def run(p, cp, r, labels):
            logp = classifier_logp_fn(classifier, as_variables(cp), clf_sde)
            return fn(r, model.build(p), logp, labels, scale)[0]

        return run

    labels = np.full((n,), int(label), np.int32)
    x = _run(model, make, (labels,), salt=5,
             weights=(model.params, sharding.replicate(clf_params, model.mesh)))
    return common.write(config, x, Path(out_dir) / f"class_{int(label)}_samples",
                        f"class {int(label)}", labels=labels, scale=np.float32(scale))
