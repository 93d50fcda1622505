"""Turn ../shared/reference/polysrl_full_reference.npz into a jaxmat batch and parameter tree."""

from __future__ import annotations

import numpy as np

from jaxmat.polysrl.graphs.batching import PolySRLBatch, _pad_graphs, formula_ids
from jaxmat.polysrl.reference import full_mapping, tree_from_reference


def fixture_batch(d) -> PolySRLBatch:
    """The fixture's exact batched graphs (saved, not rebuilt: ties at the 12th neighbour), 12 rows + padding."""
    n = len(d["formulas"])

    def b(key):
        return d["batch." + key]

    n_sto = np.bincount(b("sto_batch"), minlength=n)
    stoich = _pad_graphs(
        {"features": d["elem_attrs"][b("sto_x") - 1], "counts": b("sto_weight"), "numbers": b("sto_x").astype(np.int32)},
        None, b("sto_edge_index")[0], b("sto_edge_index")[1], n_sto, n_sto**2, 48, 160, n + 1,
    )
    distances = np.concatenate([d[f"graph.{i:02d}.edge_distance"] for i in range(n)])
    crystal = _pad_graphs(
        {"numbers": b("atomic_numbers").astype(np.int32)}, {"distance": distances},
        b("edge_index")[0], b("edge_index")[1], b("num_atoms"), b("num_atoms") * 12, 80, 960, n + 1,
    )
    return PolySRLBatch(stoich, crystal, formula_ids(list(d["formulas"]), n + 1), np.arange(n + 1) < n)


def fixture_params(d) -> dict:
    return tree_from_reference({k: d[k] for k in d.files}, list(full_mapping()), np.float64)


def fixture_eps(d) -> np.ndarray:
    eps = d["eps"]
    return np.concatenate([eps, np.zeros((1,) + eps.shape[1:])])
