"""Helpers for tests and benchmarks that users may want too: a small random mace-torch model and
the named HEO benchmark workloads. Nothing in the library imports this module."""

from __future__ import annotations

import numpy as np

from jaxmat.heo.generate import rocksalt_heo


def workload(name: str):
    """Benchmark workloads (seeds 0..k-1, rattle 0.1 Å): W1 = 16 x 64-atom cells, W2 = 4 x 216, W3 = 256 x 64,
    W4 = 32 x 512."""
    table = {"W1": (16, 2), "W2": (4, 3), "W3": (256, 2), "W4": (32, 4)}
    if name not in table:
        raise ValueError(f"unknown workload {name!r}: {sorted(table)}")
    count, n = table[name]
    return [rocksalt_heo(n, seed=seed) for seed in range(count)]


def build_small_mace(atomic_numbers, seed: int = 0, r_max: float = 4.0, hidden_irreps: str = "16x0e", max_ell: int = 2,
                     correlation: int = 3, num_interactions: int = 2, first_block: str = "RealAgnosticResidualInteractionBlock",
                     num_bessel: int = 8, radial_mlp=(64, 64, 64), avg_num_neighbors: float = 8.0, scale_shift=(0.1, 0.0),
                     **extra):
    """A float64 ScaleShiftMACE with random weights for these atomic numbers (any mace-torch option via extra)."""
    import torch
    from e3nn import o3
    from mace import modules

    atomic_numbers = sorted(int(z) for z in set(atomic_numbers))
    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # U matrices and buffers built in float64, as mace_run_train does
    try:
        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=num_bessel, num_polynomial_cutoff=5, max_ell=max_ell, interaction_cls=block,
            interaction_cls_first=modules.interaction_classes[first_block], num_interactions=num_interactions,
            num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps(hidden_irreps), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=-np.linspace(1.0, 3.0, len(atomic_numbers)), avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=atomic_numbers, correlation=correlation, gate=torch.nn.functional.silu,
            radial_MLP=list(radial_mlp), atomic_inter_scale=scale_shift[0], atomic_inter_shift=scale_shift[1], **extra,
        )
    finally:
        torch.set_default_dtype(previous_dtype)
    return model.double()
