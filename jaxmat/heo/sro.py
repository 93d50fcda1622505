"""Warren-Cowley short-range order of the cations in their first shell.

The shell comes from the cation sublattice alone: the distances between cations (periodic images included)
up to 1.75 x the median nearest-cation distance, split at the middle of the widest gap between consecutive
distances (rock salt: 12 cation neighbours at a/sqrt(2), the next shell at a; a rattle of 0.1 Å leaves the
gap wide open). For cation species a, b with site fraction c_b and p_ab the fraction of the shell neighbours
of a-sites that hold b (images counted as neighbours, as they are in the crystal):

    alpha_ab = 1 - p_ab / c_b

0 for a random solution, < 0 where a-b pairs are favoured, > 0 where they are avoided (alpha_aa < 0:
clustering). alpha_ab = alpha_ba (N_a z p_ab = N_b z p_ba on a lattice of constant coordination z).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.neighbors import close_pairs


def shell_cutoff(atoms, sites: np.ndarray) -> float:
    """The first cation shell's outer radius (Å) of one structure: the middle of the widest gap in its
    cation-cation distances below 1.75 x the median nearest-cation distance."""
    positions, cell, periodic = atoms.positions[sites], np.asarray(atoms.cell[:], float), bool(np.all(atoms.pbc))
    reach = 1.0
    while True:  # grow the search until every cation has a neighbour
        i, _, d = close_pairs(positions, cell, periodic, reach, full_list=True)
        if len(sites) < 2 or len(np.unique(i)) == len(sites):
            break
        reach *= 1.5
        if reach > 50:
            raise ValueError("cations further than 50 Å apart: no cation shell")
    nearest = np.full(len(sites), np.inf)
    np.minimum.at(nearest, i, d)
    limit = 1.75 * float(np.median(nearest))
    _, _, d = close_pairs(positions, cell, periodic, limit, full_list=False)
    d = np.sort(np.unique(np.round(d, 6)))
    if len(d) < 2:
        return float(limit)
    gaps = np.diff(d)
    k = int(np.argmax(gaps))
    return float(0.5 * (d[k] + d[k + 1]))


def shell_pairs(structures, row_starts, sites_list) -> tuple[np.ndarray, np.ndarray]:
    """Ordered first-shell cation pairs (i, j) of every structure as global rows (row_starts: each structure's
    first row; sites_list: its cation atoms), images counted as separate neighbours."""
    first, second = [], []
    for atoms, start, sites in zip(structures, row_starts, sites_list):
        cutoff = shell_cutoff(atoms, sites)
        i, j, _ = close_pairs(atoms.positions[sites], np.asarray(atoms.cell[:], float), bool(np.all(atoms.pbc)), cutoff,
                              full_list=True)
        first.append(start + sites[i]), second.append(start + sites[j])
    return np.concatenate(first).astype(np.int32), np.concatenate(second).astype(np.int32)


def warren_cowley(labels, pair_i, pair_j, pair_system, cation_labels, n_systems: int):
    """alpha (S, L, L) of every system for the cation labels ``cation_labels`` (L,) from the ordered shell pairs
    (pair_i, pair_j, pair_system); NaN where a species is absent from a system."""
    cation_labels = jnp.asarray(cation_labels)
    one_i = (labels[pair_i][:, None] == cation_labels[None, :]).astype(jnp.float32)
    one_j = (labels[pair_j][:, None] == cation_labels[None, :]).astype(jnp.float32)
    counts = jax.ops.segment_sum(one_i[:, :, None] * one_j[:, None, :], pair_system, n_systems)  # (S, L, L) ordered a->b
    from_a = jnp.sum(counts, axis=2)  # shell neighbours of a-sites
    p = counts / from_a[:, :, None]
    per_species = jnp.sum(counts, axis=1)  # neighbours that hold b, proportional to N_b on a lattice of constant z
    concentration = per_species / jnp.sum(per_species, axis=1, keepdims=True)
    return 1.0 - p / concentration[:, None, :]

