#!/usr/bin/env bash
# The GPU benchmark in one command (on the device machine, from the repository root):
#   bash benchmarks/gpu/run.sh OUTDIR
# Installs the wheels carried in .whl/ (see fetch_wheels.sh) into a temporary site folder, puts the checkout
# on PYTHONPATH, and runs harness.py within a hard budget. Environment:
#   JAXMAT_GPU_BUDGET   seconds for all units (default 420)      JAXMAT_GPU_CASES  unit-name prefixes to run
#   JAXMAT_GPU_SMOKE=1  the same code at toy sizes (CPU is fine: how it is tested here and in CI)
#   JAXMAT_GPU_WHEELS   folder of wheels to install first (default .whl; empty: use the Python as it is)
#   JAXMAT_GPU_SITE     the site folder they go to (default /tmp/jaxmat-gpu-site; it stays while the machine is warm,
#                       so wheel sets carried by separate calls add up there)
#   JAXMAT_GPU_INSTALL_ONLY=1  install the carried wheels and stop (a call that only brings a wheel set)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=${1:?usage: bash benchmarks/gpu/run.sh OUTDIR}
mkdir -p "$OUTDIR"
PYTHON=${PYTHON:-python3}
WHEELS=${JAXMAT_GPU_WHEELS-$ROOT/.whl}
SITE=${JAXMAT_GPU_SITE:-/tmp/jaxmat-gpu-site}
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
fi
if [ -n "${JAXMAT_GPU_INSTALL_ONLY:-}" ]; then
  echo "installed into $SITE: $(ls "$SITE" 2>/dev/null | grep -c dist-info) packages"
  exit 0
fi
if [ -n "$WHEELS" ] && [ -d "$SITE" ]; then  # what this call and earlier calls on this machine installed
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and torch share the device; peaks are measured, not reserved
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PYTHON" "$ROOT/benchmarks/gpu/harness.py" --out "$OUTDIR" --budget "${JAXMAT_GPU_BUDGET:-420}" ${JAXMAT_GPU_CASES:+--cases "$JAXMAT_GPU_CASES"}
