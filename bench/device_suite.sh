#!/usr/bin/env bash
# Prepared runs on a machine with one GPU (or TPU), one table on stdout. Never run by the tests
# or CI.
#
#   bash bench/device_suite.sh                   # from the repository root: every part, ~20 min
#   DEVICE_SUITE_PARTS="train8 train norm" bash bench/device_suite.sh       # ~9 min (estimated)
#   DEVICE_SUITE_PARTS="remat sample likelihood" bash bench/device_suite.sh  # ~9 min (estimated)
#   DEVICE_SUITE_PARTS=official DEVICE_SUITE_OFFICIAL=PATH/score_sde_pytorch \
#       bash bench/device_suite.sh                                           # ~6 min (estimated)
#   DEVICE_SUITE_SMOKE=1 bash bench/device_suite.sh   # tiny sizes: checks the suite on a CPU
#
# DEVICE_SUITE_BUDGET=SECONDS caps the whole run (each part gets at most what is left, less 20 s
# for the table), so that a call with a time limit still prints the rows measured; with
# DEVICE_SUITE_OUT=FILE the rows also land in FILE as they are measured.
#
# On an H200 (2026-12-04, jax 0.11.2) XLA compiled each full-size train step for 59-85 s, and
# the train8 part spent another ~67 s per model before its timings, so the whole suite does not
# fit one 10-minute call: the two halves above each do (BENCHMARKS.md section 8 has what each
# lease measured).
#
# Measures (bench/device_suite.py, one process per part):
#   train8      full CIFAR-10 DDPM++ and NCSN++ train steps at batch 8, fp32 (the rows that
#               bench/vs_official.py compares with the official code on a CPU), with compile time
#   train       full CIFAR-10 DDPM++ train step at batch 128: images/s in fp32 and bf16, with
#               the compiled plan's bytes and the allocator's peak bytes in use
#   remat       the same in bf16 + remat and remat (fp32)
#   sample      PC-1000 and DPM-Solver-20 samples/s (batch 64, float32)
#   likelihood  probability-flow ODE log-likelihood: diffrax (jit + vmap) vs the official scipy
#               RK45 host loop on the full network (batch 8, rtol = atol = 1e-5)
#   norm        GroupNorm alone at batch 128: project vs flax.linen vs torch (when the Python has
#               torch; CUDA when it sees the GPU), forward and forward + backward
#   official    bench/vs_official.py --device cuda: the full-size DDPM++ / NCSN++ forward and
#               train step (batch 8) against the official code on the same GPU, 5 interleaved
#               pairs; needs DEVICE_SUITE_OFFICIAL (a score_sde_pytorch checkout: carry it) and
#               torch with nvcc and ninja (torch builds the official CUDA extensions; a Python
#               other than $PYTHON runs the official side when TORCH_PYTHON names it); its own
#               table comes after the suite's. Run only when named or when that variable is set.
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
# A compilation cache of this run only: the parts are separate processes, and train8, train and
# remat initialize the same DDPM++ train state (the init does not depend on the batch size), whose
# compilation the later ones then read. No timed or compile-timed program is compiled twice, so
# no measured number comes from the cache.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT  # the run's own folder
fi
export JAX_COMPILATION_CACHE_DIR
status=0
# Seconds per part, from the 2026-12-04 H200 lease where it measured one (train8 ran for 259 s;
# train's fp32 step compiled for 85 s, DPM-Solver-20's first call took 15 s; sample and likelihood
# ran out of 80 and 110 s); a part that fails or runs out of time leaves its rows so far and the
# other parts' rows in the table.
declare -A LIMIT=([train8]="${TRAIN8_TIMEOUT:-300}" [train]="${TRAIN_TIMEOUT:-240}"
                  [remat]="${REMAT_TIMEOUT:-240}" [sample]="${SAMPLE_TIMEOUT:-150}"
                  [likelihood]="${LIKELIHOOD_TIMEOUT:-300}" [norm]="${NORM_TIMEOUT:-60}"
                  [official]="${OFFICIAL_TIMEOUT:-420}")
OFFICIAL_TABLE="${OUT%.jsonl}_official.txt"
: > "$OFFICIAL_TABLE"
for part in ${DEVICE_SUITE_PARTS:-train8 train remat sample likelihood norm ${DEVICE_SUITE_OFFICIAL:+official}}; do
  if [ -z "${LIMIT[$part]:-}" ]; then
    echo "[device_suite] unknown part '$part' in DEVICE_SUITE_PARTS; parts: ${!LIMIT[*]}" >&2
    exit 2
  fi
  limit="${LIMIT[$part]}"
  if [ -n "${DEVICE_SUITE_BUDGET:-}" ]; then  # what is left of the budget, less 20 s for the table
    left=$((DEVICE_SUITE_BUDGET - SECONDS - 20))
    if [ "$left" -lt 30 ]; then
      echo "[device_suite] part '$part' skipped: ${DEVICE_SUITE_BUDGET} s budget spent" >&2
      status=1
      continue
    fi
    [ "$left" -lt "$limit" ] && limit="$left"
  fi
  if [ "$part" = official ]; then
    if [ -z "${DEVICE_SUITE_OFFICIAL:-}" ] || [ ! -d "$DEVICE_SUITE_OFFICIAL/models" ]; then
      echo "[device_suite] part 'official' needs DEVICE_SUITE_OFFICIAL=<score_sde_pytorch checkout>" \
           "(got '${DEVICE_SUITE_OFFICIAL:-}')" >&2
      status=1
      continue
    fi
    if [ "${DEVICE_SUITE_SMOKE:-}" = "1" ]; then  # the small networks on the CPU
      args=(--device cpu --only small --calls forward,train_step --pairs 2 --no-compile-time)
    else
      args=(--device cuda --only full --calls forward,train_step --full-pairs 5 --no-compile-time)
    fi
    timeout "$limit" "$PY" bench/vs_official.py --official "$DEVICE_SUITE_OFFICIAL" \
        --torch-python "${TORCH_PYTHON:-$PY}" "${args[@]}" > "$OFFICIAL_TABLE" \
      || { echo "[device_suite] part 'official' failed or timed out (exit $?)" >&2; status=1; }
    continue
  fi
  timeout "$limit" "$PY" bench/device_suite.py "$part" --out "$OUT" >&2 \
    || { echo "[device_suite] part '$part' failed or timed out (exit $?)" >&2; status=1; }
done
echo "rows: $OUT" >&2
if [ -s "$OUT" ]; then
  "$PY" bench/device_suite.py table --out "$OUT"
fi
if [ -s "$OFFICIAL_TABLE" ]; then
  echo
  cat "$OFFICIAL_TABLE"
fi
exit $status
