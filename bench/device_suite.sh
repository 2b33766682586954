#!/usr/bin/env bash
# One prepared run on a machine with one GPU (or TPU): ~6-10 minutes, one table on stdout.
# Never run by the tests or CI.
#
#   bash bench/device_suite.sh                   # from the repository root
#   DEVICE_SUITE_SMOKE=1 bash bench/device_suite.sh   # tiny sizes: checks the suite on a CPU
#
# Measures (bench/device_suite.py, one process per part):
#   train       full CIFAR-10 DDPM++ train step at batch 128: images/s in fp32, bf16, remat,
#               bf16 + remat, with the compiled plan's bytes and the allocator's peak bytes in use
#   train8      full CIFAR-10 DDPM++ and NCSN++ train steps at batch 8, fp32 (the rows that
#               bench/vs_official.py compares with the official code on a CPU), with compile time
#   sample      PC-1000 and DPM-Solver-20 samples/s (batch 64, float32)
#   likelihood  probability-flow ODE log-likelihood: diffrax (jit + vmap) vs the official scipy
#               RK45 host loop on the full network (batch 8, rtol = atol = 1e-5)
#
# What the machine needs. Present there: jax (with its CUDA / TPU plugin), flax, optax,
# orbax-checkpoint, diffrax (+ equinox, jaxtyping, lineax), numpy, scipy -- which bring
# absl-py, PyYAML, msgpack and etils. NOT present, carried as wheels in a folder ($WHEELS,
# default ./wheels) and installed from it offline:
#   ml-collections   configs (pure Python)
#   pillow           imported by the data pipeline (score_sde_jax/data/images.py)
# Prepare the folder on a machine with PyPI access, for the GPU machine's Python (check it with
# `python3 -c 'import sys; print(sys.version)'` there; 3.12 below) and platform:
#   pip download --only-binary=:all: --no-deps --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d wheels ml-collections pillow
# then copy ./wheels next to the repository (or set WHEELS=/path/to/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-wheels}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing() {
  "$PY" - <<'EOF'
import importlib.util
need = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
        "diffrax": "diffrax", "numpy": "numpy", "scipy": "scipy", "absl": "absl-py",
        "yaml": "PyYAML", "ml_collections": "ml-collections", "PIL": "pillow"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
EOF
}

gone="$(missing)"
if [ -n "$gone" ] && [ -d "$WHEELS" ]; then
  echo "[device_suite] installing from $WHEELS (offline): $gone" >&2
  "$PY" -m pip install --no-index --find-links "$WHEELS" $gone >&2 || true
  gone="$(missing)"
fi
if [ -n "$gone" ]; then
  cat >&2 <<EOF
[device_suite] missing Python packages: $gone
  This machine has no PyPI. On a machine that has, download the wheels for this machine's
  Python and platform, copy the folder here and rerun with WHEELS=<folder>:
    pip download --only-binary=:all: --no-deps --python-version $("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') \\
        --platform manylinux2014_x86_64 -d wheels $gone
EOF
  exit 2
fi

if [ "${DEVICE_SUITE_SMOKE:-}" != "1" ]; then
  "$PY" - <<'EOF'
import sys
import jax
d = jax.devices()[0]
if d.platform not in ("gpu", "tpu"):
    sys.exit(f"[device_suite] no accelerator: jax sees {d.platform} ({d.device_kind}); "
             "DEVICE_SUITE_SMOKE=1 runs the tiny CPU check instead")
EOF
fi

OUT="${DEVICE_SUITE_OUT:-$(mktemp -d)/device_suite.jsonl}"
: > "$OUT"
status=0
# Seconds per part (9.3 min in all); a part that fails or runs out of time leaves the others'
# rows in the table.
for spec in "train:${TRAIN_TIMEOUT:-240}" "train8:${TRAIN8_TIMEOUT:-90}" "sample:${SAMPLE_TIMEOUT:-100}" \
            "likelihood:${LIKELIHOOD_TIMEOUT:-130}"; do
  part="${spec%%:*}"
  timeout "${spec##*:}" "$PY" bench/device_suite.py "$part" --out "$OUT" >&2 \
    || { echo "[device_suite] part '$part' failed or timed out (exit $?)" >&2; status=1; }
done
echo "rows: $OUT" >&2
"$PY" bench/device_suite.py table --out "$OUT"
exit $status
