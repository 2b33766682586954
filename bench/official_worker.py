"""The official score_sde_pytorch side of ``bench/vs_official.py``; run by it, with a Python that
has torch (and numpy, ml_collections), never by the tests:

    PYTHON_WITH_TORCH bench/official_worker.py --official PATH_TO_score_sde_pytorch [--device cuda]

It reads one JSON command a line on stdin and answers one JSON line on stdout:

- ``{"cmd": "setup", "case": NAME, "config": PATH, "overrides": {section: {key: value}},
  "inputs": NPZ, "weights": NPZ}``: builds the official network of the official config file
  ``PATH`` (relative to the checkout) with the overrides, under ``torch.manual_seed(0)``, writes
  its ``state_dict`` to ``weights`` (the project imports the same weights), reads the inputs
  (``x`` NHWC in [0, 1], ``labels``) from ``inputs`` and prepares the forward pass and the
  official training step (``losses.get_step_fn`` with ``optimization_manager`` and the EMA, as
  ``run_lib.train`` runs it on a scaled NCHW batch). With ``"sample_steps": N`` it also
  prepares ``pc``, the official predictor-corrector sampler of the config
  (``sampling.get_sampling_fn`` with ``config.sampling``'s predictor / corrector / snr, on the
  config's SDE with N steps instead of ``num_scales``), and with ``"ode_tol": TOL`` ``ode``, the
  official probability-flow ODE sampler (``sampling.get_ode_sampler``: scipy RK45, rtol = atol =
  TOL, the config's ``noise_removal``) started from the latent ``z`` (NHWC) of the inputs file.
  Both sample a batch of the inputs' size with the network in eval mode.
- ``{"cmd": "time", "case": NAME, "what": "forward" | "train_step" | "pc" | "ode"}``: the wall
  seconds and the process CPU seconds of one call (torch on CPU is synchronous; on CUDA the
  device is synchronized before and after the call), and ``nfe``,
  the network calls the call made (counted by a wrapper around the network: the official
  samplers' own counts leave out the denoising step of the ODE sampler and count a corrector
  ``none`` as one call a step), with ``nfe_reported``, the count the official sampler returned,
  and ``finite``, whether every sample value is finite.

The official code loads two CUDA extensions when ``op`` is imported (``op/fused_act.py``,
``op/upfirdn2d.py``: ``torch.utils.cpp_extension.load``). On a CPU tensor neither is used (both
files take their pure-torch path, ``fused_leaky_relu`` / ``upfirdn2d_native``), so with
``--device cpu`` the loads are replaced by a stand-in that fails if an extension kernel is ever
called, and torch runs one thread. With ``--device cuda`` the official code runs as on its own
GPUs: torch builds the two extensions (nvcc and ninja; a minute or two the first time, cached
in ``~/.cache/torch_extensions``) and the network is on the GPU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
import torch.utils.cpp_extension


class _NoExtension:
    """What ``cpp_extension.load`` returns here: the CUDA kernels are not built on a CPU run."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str):
        raise RuntimeError(f"the CUDA extension {self.name!r} was called ({attr}); "
                           "the CPU benchmark should use the official pure-torch path")


def _no_load(name, *args, **kwargs):
    return _NoExtension(name)


class _Counted(torch.nn.Module):
    """The network, counting its calls (``calls``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args):
        self.calls += 1
        return self.model(*args)


def load_official(root: str, device: str = "cpu") -> dict:
    """The official modules (``models.utils``, ``losses``, ``sde_lib``, ``models.ema``,
    ``sampling``), imported from the checkout at ``root``; on the CPU with the CUDA extension
    loads replaced."""
    if device == "cpu":
        torch.utils.cpp_extension.load = _no_load
    sys.path.insert(0, os.path.abspath(root))
    names = ["models.ncsnpp", "models.ddpm", "models.utils", "models.ema", "losses", "sde_lib",
             "sampling"]
    return {name: importlib.import_module(name) for name in names}


def official_config(root: str, path: str, overrides: dict, device: str = "cpu"):
    spec = importlib.util.spec_from_file_location("official_config", os.path.join(root, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.device = torch.device(device)
    for section, values in overrides.items():
        for key, value in values.items():
            config[section][key] = tuple(value) if isinstance(value, list) else value
    return config


def official_sde(mods: dict, config, n: int | None = None):
    """(SDE, sampling ε) as ``run_lib`` builds them; ``n`` steps instead of ``num_scales``."""
    sde_lib, m, name = mods["sde_lib"], config.model, config.training.sde.lower()
    n = m.num_scales if n is None else n
    if name == "vpsde":
        return sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=n), 1e-3
    if name == "subvpsde":
        return sde_lib.subVPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=n), 1e-3
    return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=n), 1e-5


def samplers(mods: dict, config, model: torch.nn.Module, command: dict, shape: tuple,
             z: torch.Tensor) -> dict:
    """The official ``pc`` and ``ode`` samplers the command asks for, as closures returning
    (samples, the sampler's reported NFE); the network is wrapped to count its calls."""
    sampling, counted, calls = mods["sampling"], _Counted(model), {}
    inverse_scaler = (lambda x: (x + 1) / 2) if config.data.centered else (lambda x: x)
    if command.get("sample_steps"):
        sde, eps = official_sde(mods, config, command["sample_steps"])
        pc = sampling.get_sampling_fn(config, sde, shape, inverse_scaler, eps)
        calls["pc"] = lambda: pc(counted)
    if command.get("ode_tol"):
        sde, eps = official_sde(mods, config)
        tol = command["ode_tol"]
        ode = sampling.get_ode_sampler(sde, shape, inverse_scaler, denoise=config.sampling.noise_removal,
                                       rtol=tol, atol=tol, method="RK45", eps=eps,
                                       device=config.device)
        calls["ode"] = lambda: ode(counted, z=z.clone())
    return {"calls": calls, "counted": counted}


def setup(mods: dict, root: str, command: dict, device: str = "cpu") -> dict:
    """The case's timed calls, as closures."""
    config = official_config(root, command["config"], command["overrides"], device)
    torch.manual_seed(0)
    model = mods["models.utils"].create_model(config)  # on config.device
    state_dict = {k.removeprefix("module."): v.detach().cpu().numpy()
                  for k, v in model.state_dict().items()}
    np.savez(command["weights"], **state_dict)
    with np.load(command["inputs"]) as data:
        x = torch.from_numpy(np.transpose(data["x"], (0, 3, 1, 2)).copy()).to(device)
        labels = torch.from_numpy(data["labels"]).to(device)
        z = (torch.from_numpy(np.transpose(data["z"], (0, 3, 1, 2)).copy()).to(device)
             if "z" in data else None)
    batch = 2 * x - 1 if config.data.centered else x  # datasets.get_data_scaler
    losses = mods["losses"]
    optimizer = losses.get_optimizer(config, model.parameters())
    ema = mods["models.ema"].ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    step_fn = losses.get_step_fn(official_sde(mods, config)[0], train=True,
                                 optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=config.training.reduce_mean,
                                 continuous=config.training.continuous,
                                 likelihood_weighting=config.training.likelihood_weighting)

    def forward():
        model.eval()
        with torch.no_grad():
            return model(x, labels)

    def train_step():
        model.train()
        return step_fn(state, batch)

    return {"forward": forward, "train_step": train_step,
            "samplers": samplers(mods, config, model, command, tuple(x.shape), z),
            "num_params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description="official side of bench/vs_official.py")
    parser.add_argument("--official", required=True, help="score_sde_pytorch checkout")
    parser.add_argument("--core", type=int, default=None, help="pin this process to that core")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    if args.device == "cpu":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    mods = load_official(args.official, args.device)
    cases: dict[str, dict] = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "setup":
            cases[command["case"]] = setup(mods, args.official, command, args.device)
            answer = {"num_params": cases[command["case"]]["num_params"], "torch": torch.__version__}
        elif command["cmd"] == "time":
            case, what = cases[command["case"]], command["what"]
            sampler = what in case["samplers"]["calls"]
            fn = case["samplers"]["calls"][what] if sampler else case[what]
            counted = case["samplers"]["counted"]
            counted.calls = 0
            sync()
            start, cpu = time.perf_counter(), time.process_time()
            out = fn()
            sync()
            answer = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
            if sampler:
                answer.update(nfe=counted.calls, nfe_reported=int(out[1]),
                              finite=bool(torch.isfinite(out[0]).all()))
        else:
            raise ValueError(f"unknown command {command!r}")
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
