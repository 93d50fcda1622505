"""Energy + forces of one MACE: jaxmat's JAX MACE (jit) vs mace-torch, same CPU, threads and dtype.

    python benchmarks/mace_forces.py [--model medium|mp-0-medium|mpa-0-medium|mh-1|PATH.model] [--dtype float64|float32] [--repeats 5]
        [--cases W1,cell512] [--contenders mace-torch,jaxmat-jax,jaxmat-jax@REF] [--one-at-a-time] [--json out.json]

medium = the MACE-MP-0 "medium" shape (128x0e+128x1o, max_ell 3, correlation 3, r_max 6 Å, 2 interactions,
89 elements) with random weights; mp-0-medium, mpa-0-medium, mh-1 = the published architecture of each MACE
foundation family (``jaxmat.testing.FAMILY_SHAPES``: full channel counts, 89 elements, random weights, the same
avg_num_neighbors and scale/shift as medium; mp-0-medium is the medium model); a multi-head shape (mh-1) is
evaluated on its first head by both contenders. PATH = any mace-torch model file (e.g. the shared HEO model).
Cases: W1 = one batch of 16 x 64-atom rattled rock-salt HEO cells; cell512 = one 512-atom cell (4x4x4);
W1:N = the first N cells of W1 (for shapes whose mace-torch W1 call does not fit in memory, e.g. mh-1).
Each contender is one force-field call as the relaxer makes it (neighbour lists/graphs included, energies,
forces and stress). Every contender lives in its own worker process (same environment and threads, its own
heap), is warmed up with one call (the JAX compilation is reported separately), and then the workers are
called in turn, one call each per round, rotating the order: on a machine shared with other jobs the load
hits all contenders alike, so the per-round ratios (and their median) are what to read.
``--one-at-a-time`` runs each worker alone instead (for a quiet machine and cases near its memory: with
the tuned allocator mace-torch's worker keeps 14 GiB resident for one medium-shape 512-atom cell, and beside
it the JAX worker's calls took a median 3.9 s against 2.2 s alone; with the default allocator, 7.4 GiB, the
same pairing was steady).
A contender may name its own precision after a colon (``jaxmat-jax:mixed``, ``jaxmat-jax:float32``,
``mace-torch:float32``; otherwise ``--dtype``); agreement is always reported against the first contender.
``jaxmat-jax@REF`` is the JAX MACE with ``ops.py`` and ``model.py`` as of git REF (e.g. HEAD): a change
measured against its own baseline in the same run. Peak resident memory of each worker is reported.
The last line is the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def medium_model():
    try:
        from jaxmat.testing import build_small_mace
    except ImportError:  # before the package reorganisation
        from jaxmat.forcefields.mace_torch import build_small_mace

    return build_small_mace(list(range(1, 90)), seed=0, hidden_irreps="128x0e+128x1o", max_ell=3, correlation=3,
                            r_max=6.0, num_bessel=10, avg_num_neighbors=61.96, scale_shift=(0.8, 0.1))


def family_model(name):
    """A random-weight mace-torch ScaleShiftMACE of one foundation family's shape (89 elements, full channels)."""
    from jaxmat.testing import build_small_mace, family_shape

    return build_small_mace(list(range(1, 90)), seed=0, avg_num_neighbors=61.96, scale_shift=(0.8, 0.1),
                            **family_shape(name))


def model_of(model_spec):
    """(mace-torch module or model path, head) for a --model value: the first head of a multi-head shape."""
    from jaxmat.testing import FAMILY_SHAPES

    if model_spec == "medium":
        return medium_model(), None
    if model_spec in FAMILY_SHAPES:
        return family_model(model_spec), (FAMILY_SHAPES[model_spec].get("heads") or [None])[0]
    return model_spec, None


def _jax_at(ref: str):
    """Replace the JAX MACE's ops.py and model.py with their text at git ``ref`` (in this process only)."""
    from jaxmat.forcefields.mace import forcefield, model, ops

    for module, name in ((ops, "ops"), (model, "model")):
        source = subprocess.run(["git", "show", f"{ref}:jaxmat/forcefields/mace/{name}.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        exec(compile(source, f"{ref}:{name}.py", "exec"), module.__dict__)
    forcefield.energy_forces_stress, forcefield.outgoing_slots = model.energy_forces_stress, ops.outgoing_slots


def make_force_field(name, model_spec, dtype, threads):
    import mace  # noqa: F401  (before e3nn)
    import torch

    torch.set_num_threads(threads)
    model, head = model_of(model_spec)
    kwargs = {} if head is None else {"head": head}
    if ":" in name:  # a contender's own precision, e.g. jaxmat-jax:mixed
        name, dtype = name.rsplit(":", 1)
    if name == "mace-torch":
        from jaxmat.forcefields.mace_torch import MACETorch

        return MACETorch(model, dtype=dtype, **kwargs)
    if "@" in name:
        _jax_at(name.split("@", 1)[1])
    from jaxmat.forcefields.mace.forcefield import MACEJax

    return MACEJax.from_torch(model, dtype=dtype, **kwargs)


def worker(name, model_spec, dtype, case, threads, out_npz):
    """One contender on one case: warm-up call, then one timed call per 'call' line on stdin."""
    from jaxmat.forcefields.base import batch_from_atoms

    force_field = make_force_field(name, model_spec, dtype, threads)  # fresh per case: no shape reuse across cases
    batch = batch_from_atoms(case_cells(case))
    started = time.perf_counter()
    out = force_field(batch, compute_stress=True)
    print(f"ready {time.perf_counter() - started} {len(batch.numbers)}", flush=True)
    while sys.stdin.readline().strip() == "call":
        started = time.perf_counter()
        out = force_field(batch, compute_stress=True)
        print(f"time {time.perf_counter() - started}", flush=True)
    np.savez(out_npz, energy_per_atom=out.energy / np.bincount(batch.system_index), forces=out.forces, stress=out.stress)
    print(f"done {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}", flush=True)


def workload_cells(name):
    try:
        from jaxmat.testing import workload
    except ImportError:  # before the package reorganisation
        from jaxmat.heo.generate import workload

    return workload(name)


def one_cell():
    from jaxmat.heo.generate import rocksalt_heo

    return [rocksalt_heo(4, seed=0)]


CASES = {"W1": lambda: workload_cells("W1"), "cell512": one_cell}


def case_cells(case):
    """The cells of a case: a CASES name, or W1:N (the first N cells of W1)."""
    if case.startswith("W1:"):
        return workload_cells("W1")[:int(case[3:])]
    return CASES[case]()


def _reply(process, token):
    """The next line of a worker that starts with token (libraries may print their own lines), split."""
    for line in process.stdout:
        if line.startswith(token + " "):
            return line.split()
    raise SystemExit(f"a worker stopped without '{token}'")


def _start(args, name, case, tmp):
    """A worker process for one contender (not yet warmed up)."""
    command = [sys.executable, __file__, "--worker", name, "--case", case, "--npz", str(Path(tmp) / f"{name}.{case}.npz"),
               "--model", args.model, "--dtype", args.dtype, "--threads", str(args.threads)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def _warm_up(worker):
    line = _reply(worker, "ready")  # warm up one at a time, so compilation is timed alone
    worker.first, worker.atoms, worker.times = float(line[1]), int(line[2]), []
    return worker


def _call(worker):
    worker.stdin.write("call\n")
    worker.stdin.flush()
    worker.times.append(float(_reply(worker, "time")[1]))


def _finish(worker, name, case, tmp) -> dict:
    worker.stdin.write("stop\n")
    worker.stdin.flush()
    peak = float(_reply(worker, "done")[1])
    worker.wait()
    return {"first_call_s": worker.first, "seconds": worker.times, "atoms": worker.atoms, "peak_rss_gib": peak,
            "arrays": dict(np.load(Path(tmp) / f"{name}.{case}.npz"))}


def run_case(args, case, contenders, tmp):
    """Alternate calls of all contenders on one case (or, with --one-at-a-time, each contender alone: its
    worker is the only one alive, so no contender's resident memory squeezes another's); {name: result}
    with per-call seconds, or {name: {"failed": why}} for a worker that died (e.g. killed out of memory)."""
    if args.one_at_a_time:
        results = {}
        for name in contenders:
            worker = _start(args, name, case, tmp)
            try:
                _warm_up(worker)
                for _ in range(args.repeats):
                    _call(worker)
                results[name] = _finish(worker, name, case, tmp)
            except SystemExit:  # the worker died: report it, go on with the others
                results[name] = {"failed": f"worker exited with code {worker.wait()} (-9: killed, e.g. out of memory)"}
        return results
    workers = {name: _warm_up(_start(args, name, case, tmp)) for name in contenders}
    for r in range(args.repeats):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for name in order:
            _call(workers[name])
    return {name: _finish(w, name, case, tmp) for name, w in workers.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--cases", default="W1,cell512")
    parser.add_argument("--contenders", default="mace-torch,jaxmat-jax")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run each contender's worker alone (start, warm up, all calls, stop) instead of alternating "
                             "calls between resident workers: for cases near the machine's memory, where one worker's "
                             "resident heap would squeeze the other's")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one contender in this process
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.dtype, args.case, args.threads, args.npz)
        return
    contenders = args.contenders.split(",")
    env = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "XLA_FLAGS")}
    print(f"model {args.model}; {args.dtype}; threads {args.threads}; contenders in their own processes, "
          f"{'one at a time' if args.one_at_a_time else 'called in turn'}; "
          f"load average at start {os.getloadavg()[0]:.1f}; env {env}", flush=True)
    summary, record = [], {}
    reference = contenders[0]
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            results = run_case(args, case, contenders, tmp)
            for name in [n for n, r in results.items() if "failed" in r]:
                print(f"{case:8s} {name:22s} FAILED: {results[name]['failed']}", flush=True)
                summary.append(f"{case} {name} failed")
                record[f"{case}/{name}"] = results.pop(name)
            if reference not in results:
                continue
            base = np.asarray(results[reference]["seconds"])
            for name, r in results.items():
                t = np.asarray(r["seconds"])
                # per round: how many times faster than the first contender (alone: round i of each, read the medians)
                ratio = base / t
                diff = {k: float(np.abs(r["arrays"][k] - results[reference]["arrays"][k]).max()) for k in r["arrays"]}
                print(f"{case:8s} {name:22s} median {1000 * np.median(t):8.1f} ms (min {1000 * t.min():.1f}; "
                      f"{len(t)} calls); {np.median(ratio):.2f}x {reference} (per-round median; range "
                      f"{ratio.min():.2f}-{ratio.max():.2f}; ratio of medians {np.median(base) / np.median(t):.2f}x); "
                      f"first call {r['first_call_s']:.1f} s; peak RSS "
                      f"{r['peak_rss_gib']:.2f} GiB; vs {reference}: |dE| {diff['energy_per_atom']:.1e} eV/atom, "
                      f"|dF| {diff['forces']:.1e} eV/Å; {r['atoms']} atoms", flush=True)
                if name != reference:
                    summary.append(f"{case} {name} {np.median(ratio):.2f}x")
                record[f"{case}/{name}"] = {k: v for k, v in r.items() if k != "arrays"}
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    print(f"summary {args.model} {args.dtype} vs {reference} (median of per-round ratios): " + ", ".join(summary))


if __name__ == "__main__":
    main()
