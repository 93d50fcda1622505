#!/usr/bin/env bash
# Run HERE (not on the GPU machine): download the Python 3.12 manylinux wheels the GPU machine lacks into
# .whl/ (ignored by git) and copy the shared small MACE beside them (.whl/models/), so that one device
# call carrying .whl has everything: run.sh installs them into a temporary site folder there.
# The GPU machine already has jax (CUDA), torch (CUDA), flax, optax, orbax, numpy, scipy, matplotlib,
# pandas, h5py, sympy, networkx, requests, lxml, msgpack, opt-einsum(-fx), py-cpuinfo, tabulate, joblib.
#   bash benchmarks/gpu/fetch_wheels.sh [DEST] [SET]     (default DEST: .whl at the repository root, SET base)
# SET: base (jaxmat's imports, mace-torch, torch-sim; 40 MB), or the NVIDIA cuEquivariance peers, which do not fit
# one call's 64 MiB carry beside base and are carried by calls of their own into the same site folder (run.sh
# with JAXMAT_GPU_INSTALL_ONLY=1; see benchmarks/README.md): cueq-ops (cuequivariance, its CUDA 13 ops and the JAX
# frontend; 46 MB) and cueq-torch (the torch frontend and its ops; 29 MB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${1:-$ROOT/.whl}
SET=${2:-base}
mkdir -p "$DEST/models"
CUEQ_OPS=(cuequivariance==0.13.0 cuequivariance-ops-cu13==0.13.0 cuequivariance-jax==0.13.0 cuequivariance-ops-jax-cu13==0.13.0)
CUEQ_TORCH=(cuequivariance-torch==0.13.0 cuequivariance-ops-torch-cu13==0.13.0)
BASE=(
  # jaxmat's own imports on the benchmark paths
  ase==3.29.0 vesin==0.6.2 jraph==0.0.6.dev0 e3nn-jax==0.21.0
  jax-md==0.2.29 frozendict==2.4.7 ml-collections==1.1.0
  pymatgen==2026.10.24 pymatgen-core==2026.10.16 monty==2026.10.21 spglib==2.8.0 uncertainties==3.2.3
  palettable==3.3.3 orjson==3.13.0 ruamel.yaml==0.19.1
  # mace-torch and what it imports (e3nn pinned by mace; python-hostlist has no wheel and is only used on SLURM)
  mace-torch==0.3.16 e3nn==0.4.4 matscipy==1.3.1 torch-ema==0.3 prettytable==3.18.0 wcwidth==0.2.14
  lmdb==3.0.0 configargparse==1.9.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  # the peer: torch-sim (0.6.x on Python 3.12) and what it imports; warp-lang (its first-choice GPU neighbour
  # list, 149 MB) is over what a call can carry, so torch-sim falls back to vesin-torch
  torch-sim-atomistic==0.6.2 nvalchemi-toolkit-ops==0.5.0 tables==3.11.1 blosc2==4.14.1 numexpr==2.14.2 ndindex==1.10.1 vesin-torch==0.6.2
)
case "$SET" in
  base) WHEELS=("${BASE[@]}") ;;
  cueq-ops) WHEELS=("${CUEQ_OPS[@]}") ;;
  cueq-torch) WHEELS=("${CUEQ_TORCH[@]}") ;;
  *) echo "unknown wheel set $SET (base, cueq-ops, cueq-torch)" >&2; exit 2 ;;
esac
PLATFORMS=()
for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
           manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$DEST" "${WHEELS[@]}"
if [ "$SET" != base ]; then
  echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
  exit 0
fi
# pure-Python packages published only as source: built into wheels here
SOURCE_ONLY=(bibtexparser==1.4.4 python-hostlist==2.3.0)
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "${SOURCE_ONLY[@]}"
MODEL="$ROOT/../shared/models/mace_heo_chgnet_small.model"
if [ -f "$MODEL" ]; then
  cp "$MODEL" "$DEST/models/"
else
  echo "note: $MODEL not found; the GPU run will use the MACE-MP-0 medium shape (random weights) only" >&2
fi
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
