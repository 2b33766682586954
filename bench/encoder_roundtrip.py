"""The probability-flow ODE encoder: round-trip error decode(encode(x)) − x against the tolerance.

    python bench/encoder_roundtrip.py [--tols 1e-3,1e-5,1e-6,1e-7] [--images 8] [--train-steps 300]
        [--config configs/digits.py --workdir runs/digits]

Encoding is ``sampling.get_ode_encoder`` (one solve per sample, ε -> T), decoding the ODE sampler
from z (the batch as one state, T -> ε), both Dopri5 at rtol = atol = tol, ε = the SDE's
sampling ε (1e-3 for VP / sub-VP, 1e-5 for VE). Models:

- ``gmm-*``: the exact score of the 2-D Gaussian mixture (``analytic.default_mixture``), 512
  samples, for VE, VP and sub-VP;
- ``tiny-ddpmpp``: the tiny DDPM++ (16×16 digits) trained for --train-steps Adam steps;
- ``checkpoint``: with --config / --workdir, the EMA weights of that run's latest checkpoint on
  the first --images test digits of its data set.

Columns: RMS over entries of decode(encode(x)) − x per sample (mean and max over samples; images
in data space, pixels in [0, 1]; the mixture in its own coordinates), the encoder's NFE per
sample (mean) and the decoder's NFE per batch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import digits, machine, print_table, tiny_conv_model, train_tiny

from score_sde_jax import analytic, datasets, sampling, sde_lib
from score_sde_jax.checkpoints import load_ema_params
from score_sde_jax.cli import load_config
from score_sde_jax.eval_lib import score_fn_builder


def round_trip(sde, eps, score, params, x, tol):
    """(per-sample RMS of decode(encode(x)) − x in model space, encoder NFE (B,), decoder NFE)."""
    enc = sampling.get_ode_encoder(sde, x.shape, rtol=tol, atol=tol, eps=eps)
    dec = sampling.get_ode_sampler(sde, x.shape, rtol=tol, atol=tol, eps=eps)

    @jax.jit
    def run(params, x):
        z, nfe = enc(lambda y, t: score(params, y, t), x)
        back, dnfe = dec(None, lambda y, t: score(params, y, t), z=z)
        return jnp.sqrt(jnp.mean((back - x).reshape(len(x), -1) ** 2, axis=1)), nfe, dnfe

    rms, nfe, dnfe = run(params, x)
    return np.asarray(rms), np.asarray(nfe), int(dnfe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tols", default="1e-3,1e-5,1e-6,1e-7")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--config", default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    tols = [float(t) for t in args.tols.split(",")]

    cases = []  # (name, sde, eps, score(params, x, t), params, x (model space), model -> data scale)
    gmm = analytic.default_mixture()
    x_gmm = gmm.sample(jax.random.PRNGKey(0), 512)
    for name, sde in (("gmm-ve", sde_lib.VESDE()), ("gmm-vp", sde_lib.VPSDE()),
                      ("gmm-subvp", sde_lib.subVPSDE())):
        exact = gmm.score_fn(sde)
        eps = 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3
        cases.append((name, sde, eps, lambda p, x, t, f=exact: f(x, t), None, x_gmm, 1.0))
    _, sde, eps, variables, score = tiny_conv_model("vpsde", init_scale=0.0)
    variables = train_tiny(sde, variables, score, args.train_steps)
    cases.append((f"tiny-ddpmpp ({args.train_steps} steps)", sde, eps, score, variables,
                  digits("test")[: args.images], 0.5))
    if args.config:
        config = load_config(args.config)
        params, step = load_ema_params(config, args.workdir)
        sde, eps = sde_lib.get_sde(config)
        build = score_fn_builder(config, sde)
        batch = next(iter(datasets.get_dataset(config, "test", evaluation=True)))
        x = datasets.get_data_scaler(config)(jnp.asarray(batch["image"][: args.images]))
        inverse = datasets.get_data_inverse_scaler(config)
        scale = float(inverse(1.0) - inverse(0.0))
        cases.append((f"checkpoint {step}", sde, eps, lambda p, x, t: build(p)(x, t), params, x, scale))

    rows = []
    for name, sde, eps, score, params, x, scale in cases:
        for tol in tols:
            rms, nfe, dnfe = round_trip(sde, eps, score, params, x, tol)
            rows.append([name, f"{tol:.0e}", f"{scale * rms.mean():.2e}", f"{scale * rms.max():.2e}",
                         f"{nfe.mean():.0f}", dnfe])
    print_table(f"PF-ODE encoder round trip ({machine()})",
                ["model", "rtol=atol", "RMS mean", "RMS max", "enc NFE", "dec NFE"], rows,
                ["RMS of decode(encode(x)) - x per sample; images in pixels of [0, 1]."])


if __name__ == "__main__":
    main()
