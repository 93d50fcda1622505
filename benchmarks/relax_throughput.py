"""Relaxation throughput on rock-salt HEO supercells: ASE (one structure at a time), torch-sim batched
FIRE and jaxmat (batched; MACE through the torch bridge, or jaxmat's JAX MACE for the jaxmat-jax-*
contenders, which run the device loop; a one-structure warm-up run happens before the timing, so the
timed run compiles its own batch shape, as a first run would), same MACE model, same process, same threads.

    python benchmarks/relax_throughput.py --workload W1 --model ../shared/models/mace_heo_chgnet_small.model
        [--contenders ase-fire,ase-lbfgs,torch-sim-fire,jaxmat-fire,jaxmat-lbfgs,jaxmat-jax-fire,jaxmat-jax-lbfgs]
        [--json out.json]

--model may also name a MACE foundation family's shape (mp-0-medium, mpa-0-medium, mh-1: the published
architecture with random weights, 89 elements, as ``mace_forces.py --model``; a multi-head shape runs its first
head in every contender). Random weights make a potential whose relaxations need not converge at fmax 0.05:
give every contender the same ``--max-steps`` (e.g. 5) and read the time per structure evaluation, which the
last lines report for every contender (ASE: steps + 1 calls per structure; jaxmat: its evaluations).

A JAX contender may name the JAX MACE's precision after a colon: jaxmat-jax-lbfgs:mixed (float32 model,
float64 geometry and sums) or jaxmat-jax-lbfgs:float32; the optimizer always runs in float64.

W1 = 16 x 64-atom cells, W2 = 4 x 216-atom cells (MgO conventional cell a = 4.2 Å, cations drawn from
Mg/Co/Ni/Cu/Zn, rattle 0.1 Å, seeds 0..k-1); fmax 0.05 eV/Å, at most 300 steps, float64.
Run every contender in the same environment (e.g. all with the tuned allocator of
shared/docs/stack.md: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000).
The last line is a one-line summary with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import numpy as np

from jaxmat.testing import workload

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared/models/mace_heo_chgnet_small.model"


def family_model_file(name, folder) -> tuple[Path, str | None]:
    """A foundation family's shape with random weights (mace_forces.py's family_model) saved as a mace-torch
    model file in folder, and its first head (None for a single-head shape)."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mace_forces import model_of

    model, head = model_of(name)
    path = Path(folder) / f"{name}.model"
    torch.save(model, path)
    return path, head


def run_ase(structures, model, kind, fmax, max_steps, device="cpu", head=None):
    """ASE's FIRE / LBFGS with mace-torch's calculator, one structure at a time (one warm-up call untimed)."""
    from ase.optimize import FIRE, LBFGS
    from mace.calculators import MACECalculator

    calculator = MACECalculator(model_paths=str(model), device=device, default_dtype="float64",
                                **({} if head is None else {"head": head}))
    warm = structures[0].copy()
    warm.calc = calculator
    warm.get_forces()  # device context, kernels and allocator outside the timing
    steps, energies, converged = [], [], 0
    started = time.perf_counter()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        optimizer = (FIRE if kind == "fire" else LBFGS)(atoms, logfile=None)
        converged += bool(optimizer.run(fmax=fmax, steps=max_steps))
        steps.append(optimizer.nsteps)
        energies.append(atoms.get_potential_energy())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps, "energies": energies, "converged": converged,
            "force_evaluations": int(sum(steps) + len(steps))}


def run_torch_sim(structures, model, fmax, max_steps):
    import torch
    import torch_sim as ts
    from torch_sim.models.mace import MaceModel

    mace_model = MaceModel(model=torch.load(model, map_location="cpu", weights_only=False), device=torch.device("cpu"),
                           dtype=torch.float64, compute_forces=True, compute_stress=False)
    started = time.perf_counter()
    state = ts.optimize(system=[a.copy() for a in structures], model=mace_model, optimizer=ts.optimizers.fire,
                        convergence_fn=ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=False),
                        max_steps=max_steps)
    seconds = time.perf_counter() - started
    final = ts.io.state_to_atoms(state)
    out = mace_model(state)
    forces = out["forces"].detach().numpy()
    fmax_per = [np.linalg.norm(forces[state.system_idx.numpy() == i], axis=1).max() for i in range(len(final))]
    return {"seconds": seconds, "steps": None, "energies": out["energy"].detach().numpy().tolist(),
            "converged": int(sum(f < fmax for f in fmax_per)), "force_evaluations": None}


def run_jaxmat(structures, model, kind, fmax, max_steps, backend="torch", dtype="float64", head=None):
    from jaxmat.relax import relax

    heads = {} if head is None else {"head": head}
    if backend == "jax":
        from jaxmat.forcefields.mace.forcefield import MACEJax

        force_field = MACEJax.from_torch(model, dtype=dtype, **heads)
        relax(structures[:1], force_field, optimizer=kind, fmax=fmax, max_steps=2, progress=False)  # compile outside the timing
    else:
        from jaxmat.forcefields.mace_torch import MACETorch

        force_field = MACETorch(model, **heads)
    started = time.perf_counter()
    results = relax(structures, force_field, optimizer=kind, fmax=fmax, max_steps=max_steps, progress=False)
    seconds, stats = time.perf_counter() - started, results.stats
    inside = stats["force_seconds"] + stats.get("compile_seconds", 0.0)  # the device loop times compilation apart
    out = {"seconds": seconds, "steps": [r.n_steps for r in results], "energies": [r.energy for r in results],
           "converged": sum(r.status == "converged" for r in results), "force_evaluations": stats["structure_evaluations"],
           "batch_calls": stats["force_calls"], "outside_force_fraction": 1 - inside / stats["total_seconds"]}
    out.update({k: stats[k] for k in ("compilations", "compile_seconds", "device_seconds", "host_seconds", "rebuilds") if k in stats})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="W1", choices=["W1", "W2"])
    parser.add_argument("--first", type=int, help="only the first N structures of the workload (shapes too large for memory)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--contenders", default="ase-fire,ase-lbfgs,torch-sim-fire,jaxmat-fire,jaxmat-lbfgs")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from jaxmat.testing import FAMILY_SHAPES

    head = None
    if args.model in FAMILY_SHAPES:
        import tempfile

        folder = tempfile.TemporaryDirectory()
        args.model, head = family_model_file(args.model, folder.name)
    if not Path(args.model).exists():
        raise SystemExit(f"model {args.model} not found: pass --model (a mace-torch model file or a family shape)")
    structures = workload(args.workload)[:args.first]
    env = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}
    print(f"{args.workload}: {len(structures)} x {len(structures[0])} atoms; model {Path(args.model).name}; "
          f"torch threads {args.threads}; allocator env {env}")
    results = {}
    for name in args.contenders.split(","):
        if name.startswith("ase-"):
            results[name] = run_ase(structures, args.model, name[4:], args.fmax, args.max_steps, head=head)
        elif name == "torch-sim-fire":
            results[name] = run_torch_sim(structures, args.model, args.fmax, args.max_steps)
        elif name.startswith("jaxmat-jax-"):
            kind, _, dtype = name[11:].partition(":")
            results[name] = run_jaxmat(structures, args.model, kind, args.fmax, args.max_steps, backend="jax",
                                       dtype=dtype or "float64", head=head)
        elif name.startswith("jaxmat-"):
            results[name] = run_jaxmat(structures, args.model, name[7:], args.fmax, args.max_steps, head=head)
        else:
            raise SystemExit(f"unknown contender {name}")
        r = results[name]
        r["structures_per_s"] = len(structures) / r["seconds"]
        steps = f"steps mean {np.mean(r['steps']):.1f} max {max(r['steps'])}" if r["steps"] else "steps n/a"
        extra = f", {100 * r['outside_force_fraction']:.1f}% of time outside force calls" if "outside_force_fraction" in r else ""
        if "compilations" in r:
            extra += f" (device loop: {r['compilations']} compilations, {r['compile_seconds']:.1f} s)"
        if r["force_evaluations"]:  # per structure evaluation; the device loop's compilation left out
            r["ms_per_evaluation"] = 1000 * (r["seconds"] - r.get("compile_seconds", 0.0)) / r["force_evaluations"]
            extra += f"; {r['ms_per_evaluation']:.0f} ms per structure evaluation" + (" (compilation left out)" if "compile_seconds" in r else "")
        print(f"{name:15s} {r['seconds']:8.1f} s  {r['structures_per_s']:.3f} structures/s  {steps}  "
              f"converged {r['converged']}/{len(structures)}  force evaluations {r['force_evaluations']}{extra}", flush=True)
    pairs = []  # (jaxmat contender, its peer): ASE's optimizer of the same kind, the torch bridge, torch-sim FIRE
    for mine in results:
        if mine.startswith("jaxmat-"):
            base, _, dtype = mine.partition(":")
            kind = base.removeprefix("jaxmat-jax-").removeprefix("jaxmat-")
            pairs += [(mine, f"ase-{kind}"), (mine, "torch-sim-fire")] + ([(mine, f"jaxmat-{kind}")] if "-jax-" in mine else [])
            pairs += [(mine, base)] if dtype else []  # a reduced precision against the same contender in float64
    for mine, peer in pairs:
        if peer in results and not peer.startswith("torch-sim"):
            diff = np.abs(np.array(results[mine]["energies"]) - np.array(results[peer]["energies"]))
            print(f"final energies {mine} vs {peer}: max |dE| {diff.max():.2e} eV, mean {diff.mean():.2e} eV")
    ratios = [f"{mine}/{peer} {results[peer]['seconds'] / results[mine]['seconds']:.2f}x" for mine, peer in pairs if peer in results]
    ratios += [f"{mine}/{peer} per evaluation {results[peer]['ms_per_evaluation'] / results[mine]['ms_per_evaluation']:.2f}x"
               for mine, peer in pairs if "ms_per_evaluation" in results.get(peer, {}) and "ms_per_evaluation" in results[mine]]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    print(f"summary {args.workload}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
