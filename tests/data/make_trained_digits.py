"""Make tests/data/trained_digits.npz: the suite's trained digits model (tests/digits_model.py).

Run from the repository root after a change that alters training (the initialisation, the data
stream, the loss, the optimizer, the EMA), when ``test_demos_train.py`` says the stored run no
longer matches this code:

    PYTHONPATH=. .venv/bin/python tests/data/make_trained_digits.py     # ~1-2 min on a CPU

It trains the recipe's first ``CHECK_STEPS`` updates with ``run_lib.train`` on one device,
then resumes the same work directory to ``STEPS`` (a resume continues exactly where an
uninterrupted run would be: ``tests/test_preemption.py``), and stores the EMA parameters after
``STEPS`` (``ema/<path>``) and the summary of the first updates (``check/<name>``), both of the
one run. The file is written through a temporary file and a rename.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/

import jax  # noqa: E402
import numpy as np  # noqa: E402
from digits_model import CHECK_STEPS, DATA, STEPS, train, update_summary  # noqa: E402
from flax import traverse_util  # noqa: E402

from score_sde_jax import files  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check = update_summary(*train(Path(tmp) / "run", CHECK_STEPS))
        state, _ = train(Path(tmp) / "run", STEPS)  # resumed at CHECK_STEPS
    assert int(state.step) == STEPS, state.step
    ema = traverse_util.flatten_dict(state.params_ema, sep="/")
    arrays = {**{f"ema/{k}": np.asarray(v, np.float32) for k, v in ema.items()},
              **{f"check/{k}": v for k, v in check.items()}}
    files.savez_atomic(DATA, **arrays)
    size = sum(np.asarray(v).nbytes for v in ema.values())
    print(f"wrote {DATA}: EMA parameters after {STEPS} steps ({size / 1e6:.1f} MB), summary of "
          f"the first {CHECK_STEPS} updates; jax {jax.__version__}")


if __name__ == "__main__":
    main()
