"""VP SDE on CIFAR-10: DDPM++ cont. (VP), the same experiment as vp/cifar10_ddpmpp_continuous.py.

Trains the DDPM++ network (61.8M parameters) with the continuous VP SDE (beta 0.1 -> 20),
denoising score matching with lambda(t) = std(t)^2, data in [-1, 1], EMA 0.9999; samples with
the Euler-Maruyama predictor and no corrector (`--config.sampling.method=ode` for the
probability-flow ODE; `--config.eval.enable_bpd=True` for bits/dim).
"""

from configs.vp.cifar10_ddpmpp_continuous import get_config as _ddpmpp_vp_continuous


def get_config():
    return _ddpmpp_vp_continuous()
