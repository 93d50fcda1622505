"""Swap attempts and Langevin MD steps per second of jaxmat.heo (swap Monte Carlo on unrelaxed energies, MD with the
skin list), with a MACE model on the named HEO workloads; compilation timed apart; the model's energies alone per batch
evaluation. An attempt can cost less than that: swaps move no atom, so in the compiled attempt loop what depends on the
geometry alone is loop-invariant for XLA. Sweeps and model calls alternate and the fastest of each counts (a shared machine).

    python benchmarks/anneal_speed.py --model ../shared/models/mace_heo_chgnet_small.model --workload W1 [--dtype float32]

--first N keeps the first N cells, --json PATH writes the numbers (the GPU harness's ``anneal`` unit reads them).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", default="W1")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--sweeps", type=int, default=3, help="timed sweeps (the fastest counts)")
    parser.add_argument("--md-steps", type=int, default=20)
    parser.add_argument("--first", type=int, default=None, help="only the first N cells of the workload")
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    args = parser.parse_args()
    from jaxmat.precision import use_float64

    use_float64(args.dtype == "float64")
    from ase import units

    from jaxmat.forcefields.registry import load_force_field
    from jaxmat.heo import langevin, swap
    from jaxmat.testing import workload

    cells = workload(args.workload)[: args.first]
    model = load_force_field(args.model, "jax", args.dtype)
    params, evaluate = model.device_model()
    lay = swap.layout(cells, [1000.0], model.device_species, model.r_max)
    graph = {k: jnp.asarray(v) for k, v in lay["graph"].items()}
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.PRNGKey(0), r))(jnp.arange(lay["n_replicas"]))
    state = swap.init(evaluate, params, graph, jnp.asarray(lay["labels"]), keys)
    arrays = (jnp.asarray(lay["sites"]), jnp.asarray(lay["n_sites"]), jnp.asarray(lay["kT"]))
    attempts = lay["sites"].shape[1]
    start = time.perf_counter()
    state, trace = swap.sweeps(evaluate, params, graph, *arrays, state, n_sweeps=1, attempts=attempts)
    jax.block_until_ready(trace)
    first = first_sweep = time.perf_counter() - start
    energy = jax.jit(swap.energies, static_argnums=0)
    jax.block_until_ready(energy(evaluate, params, graph, state["labels"]))
    sweeps, calls = [], []  # each the fastest of its repeats (a loaded machine slows some), alternated
    for _ in range(args.sweeps):
        start = time.perf_counter()
        state, trace = swap.sweeps(evaluate, params, graph, *arrays, state, n_sweeps=1, attempts=attempts)
        jax.block_until_ready(trace)
        sweeps.append(time.perf_counter() - start)
        for _ in range(4):
            start = time.perf_counter()
            jax.block_until_ready(energy(evaluate, params, graph, state["labels"]))
            calls.append(time.perf_counter() - start)
    one, call = min(sweeps), min(calls)
    per_second = lay["n_replicas"] * attempts / one
    print(f"{args.workload} ({len(cells)} x {len(cells[0])} atoms, {args.dtype}, {jax.devices()[0].platform}): swap MC "
          f"{per_second:.0f} attempts/s ({lay['n_replicas']} replicas x {attempts} attempts per sweep in {one:.2f} s; "
          f"first sweep with compilation {first:.1f} s); acceptance {float(np.mean(trace['acceptance'])):.3f}; one full model "
          f"evaluation alone {1000 * call:.0f} ms, an attempt {1000 * one / attempts:.0f} ms")
    n = sum(len(a) for a in cells)
    index = lay["graph"]["system_index"]
    masses = np.concatenate([np.concatenate([a.get_masses() for a in cells]), [1.0]])
    pbc = np.ones((len(cells) + 1, 3), bool)
    md = langevin.md_graph(lay["graph"]["positions"], lay["graph"]["cells"], pbc, index,
                           np.asarray(lay["graph"]["species_table"])[lay["labels"]], np.arange(n + 1) < n, model.r_max, 1.0)
    md_state = langevin.init_state(evaluate, params, md, np.zeros((n + 1, 3)), keys, model.r_max)
    settings = dict(dt=2 * units.fs, kT=np.full(len(cells) + 1, units.kB * 1000), friction=np.full(len(cells) + 1, 0.01 / units.fs),
                    masses=masses, pbc=pbc, cutoff=model.r_max)
    start = time.perf_counter()
    md_state, md = langevin.run(evaluate, params, md, md_state, 1, **settings)
    jax.block_until_ready(md_state["positions"])
    first = time.perf_counter() - start
    stats = {}
    start = time.perf_counter()
    md_state, md = langevin.run(evaluate, params, md, md_state, args.md_steps, stats=stats, **settings)
    jax.block_until_ready(md_state["positions"])
    took = time.perf_counter() - start
    print(f"  Langevin MD {args.md_steps / took:.1f} steps/s of the whole batch ({args.md_steps} steps in {took:.2f} s, "
          f"{stats.get('rebuilds', 0)} list rebuilds; first step with compilation {first:.1f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": jax.devices()[0].platform, "systems": len(cells), "attempts_per_s": per_second,
                       "sweep_s": one, "model_s": call, "first_sweep_s": first_sweep, "md_steps_per_s": args.md_steps / took}, handle)


if __name__ == "__main__":
    main()
