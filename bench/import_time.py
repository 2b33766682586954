"""What every process pays before its first computation: the import of NumPy, ml_dtypes, JAX
and the package (what ``main.py`` imports for ``--mode train``), each in fresh processes.

    python bench/import_time.py [--repeats 7]

Per row: the median [min, max] wall time of ``python -c "import ..."`` over ``--repeats`` fresh
interpreters (the interpreter's own start-up included), and that time relative to the first row
(the bare interpreter, the baseline of the same run). A bad command line of ``main.py`` is
reported before JAX is imported (``main.check_flags``), so the last row costs about the
interpreter and absl's flag parsing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = (
    ("python (baseline)", ["-c", "pass"]),
    ("import numpy", ["-c", "import numpy"]),
    ("import numpy, ml_dtypes", ["-c", "import numpy, ml_dtypes"]),
    ("import jax", ["-c", "import jax"]),
    ("import score_sde_jax.run_lib", ["-c", "import score_sde_jax.run_lib"]),
    ("main.py with a bad --workdir", ["main.py", "--config=configs/toy_gmm.py", "--workdir=",
                                      "--mode=train"]),
)


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=False,
                   env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import ml_dtypes
    import numpy

    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, python {sys.version.split()[0]}, "
          f"numpy {numpy.__version__}, ml_dtypes {ml_dtypes.__version__}")
    times = {name: [wall(cmd) for _ in range(args.repeats)] for name, cmd in ROWS}
    base = statistics.median(times[ROWS[0][0]])
    print(f"{'':30s} {'median s':>9s} {'[min, max]':>16s} {'x baseline':>10s}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:30s} {med:9.3f} {f'[{min(t):.3f}, {max(t):.3f}]':>16s} {med / base:10.1f}")


if __name__ == "__main__":
    main()
