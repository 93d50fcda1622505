"""Energy + forces of one MACE: jaxmat's JAX MACE (jit) vs mace-torch, same CPU, threads and dtype.

    python benchmarks/mace_forces.py [--model medium|PATH.model] [--dtype float64|float32] [--repeats 3]
        [--cases W1,cell512] [--json out.json]

medium = the MACE-MP-0 "medium" shape (128x0e+128x1o, max_ell 3, correlation 3, r_max 6 Å, 2 interactions,
89 elements) with random weights; PATH = any mace-torch model file (e.g. the shared HEO model).
Cases: W1 = one batch of 16 x 64-atom rattled rock-salt HEO cells; cell512 = one 512-atom cell (4x4x4).
Each contender is one force-field call as the relaxer makes it (neighbour lists/graphs included), timed
after one warm-up call (the JAX compilation is reported separately), each contender in its own process
(same environment and threads) so neither inherits the other's heap. The last line is the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import numpy as np

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.testing import workload


def medium_model():
    from jaxmat.testing import build_small_mace

    return build_small_mace(list(range(1, 90)), seed=0, hidden_irreps="128x0e+128x1o", max_ell=3, correlation=3,
                            r_max=6.0, num_bessel=10, avg_num_neighbors=61.96, scale_shift=(0.8, 0.1))


def time_calls(force_field, batch, repeats):
    started = time.perf_counter()
    force_field(batch)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = force_field(batch)
        times.append(time.perf_counter() - started)
    return first, times, out


def run_contender(name, model_spec, dtype, cases, repeats, threads, out_npz):
    """Time one contender on every case (runs in its own process: a clean heap for each)."""
    import torch

    torch.set_num_threads(threads)
    model = medium_model() if model_spec == "medium" else model_spec
    results, arrays = {}, {}
    for case in cases:
        # a fresh force field per case: MACEJax reuses compiled shapes up to 2x larger, which suits a
        # relaxation whose batch shrinks but would pad the 512-atom cell to the W1 batch size here
        if name == "mace-torch":
            from jaxmat.forcefields.mace_torch import MACETorch

            force_field = MACETorch(model, dtype=dtype)
        else:
            from jaxmat.forcefields.mace.forcefield import MACEJax

            force_field = MACEJax.from_torch(model, dtype=dtype)
        batch = batch_from_atoms(CASES[case]())
        first, times, out = time_calls(force_field, batch, repeats)
        results[case] = {"first_call_s": first, "seconds": times, "atoms": len(batch.numbers)}
        arrays[f"{case}/energy_per_atom"] = out.energy / np.bincount(batch.system_index)
        arrays[f"{case}/forces"] = out.forces
    np.savez(out_npz, **arrays)
    return results


CASES = {"W1": lambda: workload("W1"), "cell512": lambda: [rocksalt_heo(4, seed=0)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--cases", default="W1,cell512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one contender in this process
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.only:
        results = run_contender(args.only, args.model, args.dtype, cases, args.repeats, args.threads, args.npz)
        print(json.dumps(results))
        return
    import subprocess
    import sys
    import tempfile

    env = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "XLA_FLAGS")}
    print(f"model {args.model}; {args.dtype}; threads {args.threads}; each contender in its own process; env {env}", flush=True)
    results, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mace-torch", "jaxmat-jax"):
            npz = Path(tmp) / f"{name}.npz"
            command = [sys.executable, __file__, "--only", name, "--npz", str(npz), "--model", args.model, "--dtype", args.dtype,
                       "--cases", args.cases, "--repeats", str(args.repeats), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            arrays[name] = dict(np.load(npz))
            for case in cases:
                r = results[name][case]
                print(f"{case:8s} {name:11s} {1000 * min(r['seconds']):9.1f} ms (min of {args.repeats}; median "
                      f"{1000 * float(np.median(r['seconds'])):.1f} ms; first call {r['first_call_s']:.1f} s; {r['atoms']} atoms)", flush=True)
    summary = []
    for case in cases:
        diff_e = np.abs(arrays["mace-torch"][f"{case}/energy_per_atom"] - arrays["jaxmat-jax"][f"{case}/energy_per_atom"]).max()
        diff_f = np.abs(arrays["mace-torch"][f"{case}/forces"] - arrays["jaxmat-jax"][f"{case}/forces"]).max()
        ratio = min(results["mace-torch"][case]["seconds"]) / min(results["jaxmat-jax"][case]["seconds"])
        print(f"{case:8s} agreement: max |dE| {diff_e:.1e} eV/atom, max |dF| {diff_f:.1e} eV/Å; jaxmat-jax {ratio:.2f}x mace-torch")
        summary.append(f"{case} {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"summary {args.model} {args.dtype}: jaxmat-jax vs mace-torch " + ", ".join(summary))


if __name__ == "__main__":
    main()
