"""torch-sim's swap Monte Carlo (torch_sim.monte_carlo.swap_monte_carlo, torch-sim-atomistic 0.3.0) with mace-torch on
the same workload as benchmarks/anneal_speed.py: swap attempts per second, energies only (compute_forces=False). Each
torch-sim step proposes one swap per system and evaluates the whole batch, as one jaxmat attempt does.

    python benchmarks/anneal_torchsim.py --model ../shared/models/mace_heo_chgnet_small.model --workload W1
"""

from __future__ import annotations

import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", default="W1")
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    import torch
    import torch_sim as ts
    from ase import units
    from torch_sim.models.mace import MaceModel
    from torch_sim.monte_carlo import swap_monte_carlo

    from jaxmat.testing import workload

    cells = workload(args.workload)
    model = MaceModel(torch.load(args.model, weights_only=False), device=torch.device("cpu"), dtype=torch.float64,
                      compute_forces=False, compute_stress=False)
    state = ts.io.atoms_to_state(cells, device=torch.device("cpu"), dtype=torch.float64)
    init, step = swap_monte_carlo(model=model, kT=units.kB * 1000.0, seed=0)
    mc = init(state)
    mc = step(mc)  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        mc = step(mc)
    took = time.perf_counter() - start
    print(f"{args.workload} ({len(cells)} x {len(cells[0])} atoms, float64, cpu): torch-sim swap MC "
          f"{len(cells) * args.steps / took:.0f} attempts/s ({args.steps} steps of {len(cells)} systems in {took:.2f} s, "
          f"torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
