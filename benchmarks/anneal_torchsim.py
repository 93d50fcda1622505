"""torch-sim's swap Monte Carlo (torch_sim.monte_carlo.swap_monte_carlo, torch-sim-atomistic 0.3.0) with mace-torch on
the same workload as benchmarks/anneal_speed.py: swap attempts per second, energies only (compute_forces=False), and the
model's share of a step; then Langevin NVT steps per second (torch_sim.integrators.nvt_langevin, forces). Each torch-sim
swap step proposes one swap per system and evaluates the whole batch, as one jaxmat attempt does. Steps and model calls
alternate and the fastest of each counts (a shared machine).

    python benchmarks/anneal_torchsim.py --model ../shared/models/mace_heo_chgnet_small.model --workload W1

--device cuda runs it on the GPU (default: cuda where torch sees one), --first N keeps the first N cells, --json PATH
writes the numbers (the GPU harness's ``anneal`` unit reads them).
"""

from __future__ import annotations

import argparse
import json
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", default="W1")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--md-steps", type=int, default=5, help="torch-sim Langevin NVT steps to time (0: none)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--first", type=int, default=None, help="only the first N cells of the workload")
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    args = parser.parse_args()
    import torch
    import torch_sim as ts
    from ase import units
    from torch_sim.models.mace import MaceModel
    from torch_sim.monte_carlo import swap_monte_carlo

    from jaxmat.testing import workload

    cells = workload(args.workload)[: args.first]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = MaceModel(torch.load(args.model, weights_only=False, map_location=device), device=device, dtype=torch.float64,
                      compute_forces=False, compute_stress=False)
    state = ts.io.atoms_to_state(cells, device=device, dtype=torch.float64)
    init, step = swap_monte_carlo(model=model, kT=units.kB * 1000.0, seed=0)
    mc = init(state)
    mc = step(mc)  # warm-up
    steps, calls = [], []  # each the fastest of its repeats (a loaded machine slows some), alternated
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        mc = step(mc)
        sync()
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        model(mc)  # the model's energies alone: what bounds a step
        sync()
        calls.append(time.perf_counter() - start)
    took, call = min(steps) * args.steps, min(calls)
    numbers = {"device": str(device), "systems": len(cells), "attempts_per_s": len(cells) * args.steps / took,
               "step_s": took / args.steps, "model_s": call}
    print(f"{args.workload} ({len(cells)} x {len(cells[0])} atoms, float64, {device}): torch-sim swap MC "
          f"{len(cells) * args.steps / took:.0f} attempts/s (fastest of {args.steps} steps of {len(cells)} systems {took / args.steps:.2f} s, "
          f"torch threads {torch.get_num_threads()}); the model alone {call:.2f} s per batch evaluation "
          f"({100 * call * args.steps / took:.0f} % of a step)")
    if args.md_steps:  # torch-sim's Langevin NVT (forces needed), as benchmarks/anneal_speed.py's MD: 2 fs, 0.01 / fs, 1000 K
        from torch_sim.integrators import nvt_langevin

        forces = MaceModel(torch.load(args.model, weights_only=False, map_location=device), device=device, dtype=torch.float64,
                           compute_forces=True, compute_stress=False)
        kT = torch.tensor(units.kB * 1000.0, dtype=torch.float64)
        init, step = nvt_langevin(forces, dt=torch.tensor(2 * units.fs, dtype=torch.float64), kT=kT,
                                  gamma=torch.tensor(0.01 / units.fs, dtype=torch.float64), seed=0)
        md = step(init(state), kT)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(args.md_steps):
            md = step(md, kT)
        sync()
        took = time.perf_counter() - start
        numbers["md_steps_per_s"] = args.md_steps / took
        print(f"  torch-sim Langevin NVT {args.md_steps / took:.2f} steps/s of the whole batch ({args.md_steps} steps in {took:.2f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(numbers, handle)


if __name__ == "__main__":
    main()
