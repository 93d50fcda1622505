"""Crystal graph of a periodic structure: each atom's nearest neighbours within a cutoff.

Reference behaviour (PolySRL): neighbours within 8 Å including periodic images, sorted by distance,
the 12 nearest kept; atoms with fewer get padding edges to atom 0 at distance cutoff + 1 Å.
Edges run centre (sender) -> neighbour (receiver); the periodic image is dropped, so self-edges
and repeated pairs occur.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxmat.data.structures import MIN_INTERATOMIC_DISTANCE, StructureRecord
from jaxmat.errors import StructureError


class CrystalGraph(NamedTuple):
    """numbers (n,); senders/receivers (k*n,) atom indices; distances (k*n,) in Å; n_padded edges.

    multiplicity (optional, (n_edges,)): how many identical edges each edge stands for, after
    :func:`merge_equivalent_edges`.
    """

    numbers: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    distances: np.ndarray
    n_padded: int
    multiplicity: np.ndarray | None = None


def merge_equivalent_edges(graph: CrystalGraph, dtype=np.float32) -> CrystalGraph:
    """Merge edges with the same sender, receiver and distance (as stored in ``dtype``) into one edge
    with a multiplicity.

    Such edges are periodic images of one neighbour at the same distance (common in small,
    symmetric cells); every layer computes the same values for them, so summing one of them with its
    multiplicity is the same function with fewer edges.
    """
    distance_bits = graph.distances.astype(dtype).view(np.int32 if np.dtype(dtype).itemsize == 4 else np.int64)
    keys = np.stack([graph.senders, graph.receivers, distance_bits.astype(np.int64)], axis=1)
    _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    first, counts = first[order], counts[order]
    return graph._replace(
        senders=graph.senders[first], receivers=graph.receivers[first], distances=graph.distances[first],
        multiplicity=counts.astype(np.float64),
    )


def neighbor_pairs(record: StructureRecord, cutoff: float):
    """All (i, j, distance) pairs within cutoff (Å), periodic images included, both directions."""
    from jaxmat.forcefields.neighbors import close_pairs

    periodic = bool(record.pbc.all())
    if record.pbc.any() and not periodic:
        raise StructureError(f"structure {record.id!r}: mixed periodicity {record.pbc.tolist()} is not supported")
    i, j, d = close_pairs(record.positions, record.cell, periodic, cutoff, full_list=True)
    return i.astype(np.int64), j.astype(np.int64), d.astype(np.float64)


def crystal_graph(
    record: StructureRecord,
    cutoff: float = 8.0,
    max_neighbors: int = 12,
    pad_distance: float | None = None,
    min_distance: float = MIN_INTERATOMIC_DISTANCE,
) -> CrystalGraph:
    """Build the k-nearest-neighbour graph of a structure (distances in Å).

    Raises StructureError naming the structure if two atoms are closer than ``min_distance`` Å.
    """
    n = len(record.numbers)
    if n == 0:
        raise StructureError(f"structure {record.id!r} has no atoms")
    pad_distance = cutoff + 1.0 if pad_distance is None else pad_distance
    centre, neighbour, dist = neighbor_pairs(record, cutoff)
    if len(dist) and dist.min() < min_distance:
        k = int(np.argmin(dist))
        raise StructureError(
            f"structure {record.id!r} ({record.formula}): atoms {centre[k]} and {neighbour[k]} overlap "
            f"(distance {dist[k]:.3f} Å < {min_distance} Å)"
        )
    order = np.lexsort((dist, centre))  # by centre, then distance (stable)
    centre, neighbour, dist = centre[order], neighbour[order], dist[order]
    counts = np.bincount(centre, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(centre)) - np.repeat(starts, counts)
    keep = rank < max_neighbors
    senders = np.repeat(np.arange(n), max_neighbors)
    receivers = np.zeros(n * max_neighbors, np.int64)
    distances = np.full(n * max_neighbors, pad_distance, np.float64)
    slot = centre[keep] * max_neighbors + rank[keep]
    receivers[slot] = neighbour[keep]
    distances[slot] = dist[keep]
    n_padded = int(n * max_neighbors - keep.sum())
    return CrystalGraph(record.numbers.copy(), senders, receivers, distances, n_padded)
