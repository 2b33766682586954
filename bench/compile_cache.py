"""Time to the first training step of ``main.py --mode train``: first start (empty persistent
compilation cache) against a second start of the same config (the cache filled by the first).

    python bench/compile_cache.py [--only digits]

For each config, three fresh processes train a new work directory for ``log_freq`` steps
(1 here, so the run ends after its first step and checkpoint): with the cache off, with an
empty cache folder, and again with that folder now filled. Columns: the wall time of the whole
process (imports, data, compilation, one step, one checkpoint), the time ``main.py`` reports for
compiling the train step (``compiled the train step in ... s``), and both as ratios to the
empty-cache start of the same config.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, machine, print_table  # noqa: E402

CONFIGS = [  # (row name, config file, overrides)
    ("toy MLP 2-D mixture", "configs/toy_gmm.py", []),
    ("digits DDPM++ 8x8x1 (embedded default)", "configs/digits.py", []),
]
ONE_STEP = ["--config.training.n_iters=1", "--config.training.log_freq=1",
            "--config.training.eval_freq=1000", "--config.training.snapshot_freq=1",
            "--config.training.snapshot_freq_for_preemption=1",
            "--config.training.snapshot_sampling=False"]


def start(config: str, overrides: list[str], cache: str | None, workdir: str) -> tuple[float, float]:
    """(process wall seconds, reported train-step compile seconds) of one 1-step run."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               SCORE_SDE_JAX_CACHE=cache if cache else "off")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={os.path.join(ROOT, config)}",
           f"--workdir={workdir}", "--mode=train", *ONE_STEP, *overrides]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    found = re.search(r"compiled the train step in ([0-9.]+) s", out.stderr)
    return wall, float(found.group(1)) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the configs whose name contains this")
    args = parser.parse_args()
    rows = []
    for name, config, overrides in CONFIGS:
        if args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            off = start(config, overrides, None, os.path.join(tmp, "w0"))
            cold = start(config, overrides, cache, os.path.join(tmp, "w1"))
            warm = start(config, overrides, cache, os.path.join(tmp, "w2"))
        for label, (wall, comp) in (("cache off", off), ("first start (empty cache)", cold),
                                    ("second start (cache filled)", warm)):
            rows.append([f"{name}: {label}", f"{wall:.1f}", f"{comp:.1f}",
                         f"{wall / cold[0]:.2f}", f"{comp / cold[1]:.3f}"])
    print_table(f"Time to the first train step, 1-step runs of main.py; {machine()}",
                ["config: start", "process s", "compile s", "process x first", "compile x first"],
                rows, ["process s: the whole run (imports, data, compile, 1 step, 1 checkpoint); "
                       "compile s: as main.py logs it."])


if __name__ == "__main__":
    main()
