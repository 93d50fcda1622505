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
                     block: str = "RealAgnosticResidualInteractionBlock", mlp_irreps: str = "16x0e", readout: str | None = None,
                     edge_irreps: str | None = None, heads=None, **extra):
    """A float64 ScaleShiftMACE with random weights for these atomic numbers (any mace-torch option via extra;
    readout: a mace-torch readout class name; heads: a list of head names, each with its own scale and shift)."""
    import torch
    from mace import modules  # before e3nn: mace lets e3nn's torch constants load
    from e3nn import o3

    atomic_numbers = sorted(int(z) for z in set(atomic_numbers))
    torch.manual_seed(seed)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # U matrices and buffers built in float64, as mace_run_train does
    if readout is not None:
        extra["readout_cls"] = getattr(modules.blocks, readout)
    if edge_irreps is not None:
        extra["edge_irreps"] = o3.Irreps(edge_irreps)
    n_heads = len(heads) if heads else 1
    if heads:
        extra["heads"] = list(heads)
    energies = -np.linspace(1.0, 3.0, len(atomic_numbers))
    try:
        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=num_bessel, num_polynomial_cutoff=5, max_ell=max_ell,
            interaction_cls=modules.interaction_classes[block],
            interaction_cls_first=modules.interaction_classes[first_block], num_interactions=num_interactions,
            num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps(hidden_irreps), MLP_irreps=o3.Irreps(mlp_irreps),
            atomic_energies=energies if n_heads == 1 else np.stack([energies * (1 + 0.1 * h) for h in range(n_heads)]),
            avg_num_neighbors=avg_num_neighbors, atomic_numbers=atomic_numbers, correlation=correlation,
            gate=torch.nn.functional.silu, radial_MLP=list(radial_mlp),
            atomic_inter_scale=scale_shift[0] if n_heads == 1 else [scale_shift[0] * (1 + 0.5 * h) for h in range(n_heads)],
            atomic_inter_shift=scale_shift[1] if n_heads == 1 else [scale_shift[1] + 0.2 * h for h in range(n_heads)],
            **extra,
        )
        with torch.no_grad():  # mace-torch starts some weights at constants (ZBL, alpha/beta, embeddings): make them count
            for name, parameter in model.named_parameters():
                if name.endswith(("alpha", "beta")) or "embedding.weight" in name:
                    parameter.add_(0.5 * torch.rand_like(parameter))
    finally:
        torch.set_default_dtype(previous_dtype)
    return model.double()


FAMILY_SHAPES = {
    # the published architecture of each MACE foundation family (mace-torch 0.3.16 classes and options), channels
    # as published; tests scale channels down with family_shape(name, channels=...)
    "mp-0-medium": dict(first_block="RealAgnosticResidualInteractionBlock", block="RealAgnosticResidualInteractionBlock",
                        hidden_irreps="128x0e+128x1o", max_ell=3, correlation=3, r_max=6.0, num_bessel=10),
    "mpa-0-medium": dict(first_block="RealAgnosticDensityInteractionBlock", block="RealAgnosticDensityResidualInteractionBlock",
                         hidden_irreps="128x0e+128x1o", max_ell=3, correlation=3, r_max=6.0, num_bessel=10,
                         pair_repulsion=True, distance_transform="Agnesi"),
    "mh-1": dict(first_block="RealAgnosticResidualNonLinearInteractionBlock",
                 block="RealAgnosticResidualNonLinearInteractionBlock", hidden_irreps="128x0e+128x1o+128x2e", max_ell=3,
                 correlation=3, r_max=6.0, num_bessel=10, edge_irreps="128x0e+128x1o+128x2e", use_edge_irreps_first=True,
                 use_agnostic_product=True, apply_cutoff=False, readout="NonLinearBiasReadoutBlock",
                 heads=["omat_pbe", "matpes_r2scan", "spice_wB97M"]),
    "omol-0": dict(first_block="RealAgnosticResidualInteractionBlock", block="RealAgnosticResidualInteractionBlock",
                   hidden_irreps="128x0e+128x1o+128x2e", max_ell=3, correlation=3, r_max=6.0, num_bessel=10, num_interactions=3,
                   use_embedding_readout=True, embedding_specs={
                       "total_charge": {"type": "categorical", "num_classes": 201, "offset": 100, "emb_dim": 64, "per": "graph"},
                       "total_spin": {"type": "categorical", "num_classes": 101, "offset": 0, "emb_dim": 64, "per": "graph"}}),
}
"""MP-0b3, OMAT-0 and MPA-0 share the density-block shape of "mpa-0-medium"."""


def family_shape(name: str, channels: int | None = None) -> dict:
    """build_small_mace options of a foundation family's architecture, with ``channels`` channels per irrep if given."""
    import re

    shape = dict(FAMILY_SHAPES[name])
    if channels is not None:
        for key in ("hidden_irreps", "edge_irreps"):
            if key in shape:
                shape[key] = re.sub(r"\d+x", f"{channels}x", shape[key])
    return shape
