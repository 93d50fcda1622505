"""Padded jraph batches with a few fixed shapes, so jit compiles a handful of times, not once per batch.

Every batch holds ``n_graph`` graph slots (the last slot, or more, is padding) and node/edge
arrays rounded up to sizes of the form m * 2**k, m in {4, 5, 6, 7} (at most 25 % waste).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jraph
import numpy as np

from jaxmat.padding import bucket, round_up
from jaxmat.polysrl.graphs.crystal import CrystalGraph
from jaxmat.polysrl.graphs.stoichiometry import StoichiometryGraph


def padded_size(n: int, minimum: int = 8) -> int:
    """Smallest m * 2**k >= n (m in 4..7), at least ``minimum``: graph batches pad by at most 25 %."""
    return bucket(n, minimum, bits=2)


def _pad_graphs(nodes: dict, edges: dict | None, senders, receivers, n_node, n_edge, n_node_pad, n_edge_pad, n_graph):
    """Concatenated arrays -> GraphsTuple padded with one extra graph holding every padding node/edge."""
    total_nodes, total_edges = int(np.sum(n_node)), int(np.sum(n_edge))
    if total_nodes >= n_node_pad or total_edges > n_edge_pad or len(n_node) >= n_graph:
        raise ValueError("padding sizes too small for the batch")
    extra_nodes, extra_edges = n_node_pad - total_nodes, n_edge_pad - total_edges

    def pad(array, extra):
        return np.concatenate([array, np.zeros((extra,) + array.shape[1:], array.dtype)])

    n_node = np.concatenate([n_node, [extra_nodes], np.zeros(n_graph - len(n_node) - 1, np.int32)]).astype(np.int32)
    n_edge = np.concatenate([n_edge, [extra_edges], np.zeros(n_graph - len(n_edge) - 1, np.int32)]).astype(np.int32)
    return jraph.GraphsTuple(
        nodes={k: pad(v, extra_nodes) for k, v in nodes.items()},
        edges=None if edges is None else {k: pad(v, extra_edges) for k, v in edges.items()},
        senders=np.concatenate([senders, np.full(extra_edges, total_nodes, np.int32)]).astype(np.int32),
        receivers=np.concatenate([receivers, np.full(extra_edges, total_nodes, np.int32)]).astype(np.int32),
        n_node=n_node,
        n_edge=n_edge,
        globals=None,
    )


def _offsets(sizes):
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def batch_stoichiometry(graphs: Sequence[StoichiometryGraph], n_graph: int, dtype=np.float32, n_node_pad=None, n_edge_pad=None):
    """Stoichiometry graphs -> padded GraphsTuple with nodes {'features' (N,200), 'counts' (N,)}."""
    n_node = np.array([len(g.numbers) for g in graphs])
    n_edge = np.array([len(g.senders) for g in graphs])
    offsets = np.repeat(_offsets(n_node), n_edge)
    return _pad_graphs(
        {
            "features": np.concatenate([g.features for g in graphs]).astype(dtype),
            "counts": np.concatenate([g.counts for g in graphs]).astype(dtype),
            "numbers": np.concatenate([g.numbers for g in graphs]).astype(np.int32),
        },
        None,
        np.concatenate([g.senders for g in graphs]) + offsets,
        np.concatenate([g.receivers for g in graphs]) + offsets,
        n_node,
        n_edge,
        n_node_pad or padded_size(n_node.sum() + 1),
        n_edge_pad or padded_size(n_edge.sum() + 1),
        n_graph,
    )


def batch_crystals(graphs: Sequence[CrystalGraph], n_graph: int, dtype=np.float32, n_node_pad=None, n_edge_pad=None):
    """Crystal graphs -> padded GraphsTuple with nodes {'numbers'} and edges {'distance' (Å)}."""
    n_node = np.array([len(g.numbers) for g in graphs])
    n_edge = np.array([len(g.senders) for g in graphs])
    offsets = np.repeat(_offsets(n_node), n_edge)
    n_node_pad = n_node_pad or padded_size(n_node.sum() + 1)
    if n_edge_pad is None:  # k-NN graphs have a fixed number of edges per atom: keep edges tied to nodes
        per_atom = int(np.ceil(n_edge.sum() / max(n_node.sum(), 1)))
        n_edge_pad = max(per_atom * n_node_pad, padded_size(n_edge.sum() + 1))
    edges = {"distance": np.concatenate([g.distances for g in graphs]).astype(dtype)}
    if any(g.multiplicity is not None for g in graphs):
        edges["multiplicity"] = np.concatenate(
            [np.ones(len(g.senders)) if g.multiplicity is None else g.multiplicity for g in graphs]
        ).astype(dtype)
    return _pad_graphs(
        {"numbers": np.concatenate([g.numbers for g in graphs]).astype(np.int32)},
        edges,
        np.concatenate([g.senders for g in graphs]) + offsets,
        np.concatenate([g.receivers for g in graphs]) + offsets,
        n_node,
        n_edge,
        n_node_pad,
        n_edge_pad,
        n_graph,
    )


class PolySRLBatch(NamedTuple):
    """One training batch: stoichiometry and crystal graphs of the same rows, padded to ``n_graph`` slots.

    formula_ids: (n_graph,) int32, equal ids = same formula (polymorphs are positives); padding slots get
    unique negative ids. graph_mask: (n_graph,) bool, True for real rows.
    """

    stoichiometry: jraph.GraphsTuple
    crystal: jraph.GraphsTuple
    formula_ids: np.ndarray
    graph_mask: np.ndarray


def formula_ids(formulas: Sequence[str], n_graph: int) -> np.ndarray:
    """Integer label per row; rows with equal formula strings share an id; padding rows get unique negatives."""
    index: dict[str, int] = {}
    ids = [index.setdefault(f, len(index)) for f in formulas]
    return np.asarray(ids + [-(k + 1) for k in range(n_graph - len(ids))], np.int32)


class BatchPadding(NamedTuple):
    """Padded array sizes of a batch (graph slots = batch_size + 1)."""

    stoich_nodes: int
    stoich_edges: int
    crystal_nodes: int
    crystal_edges: int


def padding_for(stoich: Sequence[StoichiometryGraph], crystals: Sequence[CrystalGraph], index_chunks) -> BatchPadding:
    """One padding that fits every batch in ``index_chunks``: the largest totals + 1, rounded up a little."""
    s_nodes = np.array([len(g.numbers) for g in stoich])
    c_nodes = np.array([len(g.numbers) for g in crystals])
    c_edges = np.array([len(g.senders) for g in crystals])
    worst = np.max([[s_nodes[c].sum(), (s_nodes[c] ** 2).sum(), c_nodes[c].sum(), c_edges[c].sum()] for c in index_chunks], axis=0)
    return BatchPadding(round_up(worst[0] + 1, 64), round_up(worst[1] + 1, 256), round_up(worst[2] + 1, 64), round_up(worst[3] + 1, 512))


def make_polysrl_batch(
    stoich: Sequence[StoichiometryGraph], crystals: Sequence[CrystalGraph], formulas: Sequence[str], batch_size: int, dtype=np.float32,
    padding: BatchPadding | None = None,
) -> PolySRLBatch:
    """Assemble a padded batch of ``len(stoich) <= batch_size`` rows with batch_size + 1 graph slots.

    ``padding`` fixes the array sizes (so batches of a run share one compiled shape); by default
    each batch is rounded up on its own.
    """
    if not (len(stoich) == len(crystals) == len(formulas)) or len(stoich) > batch_size:
        raise ValueError("rows of a batch must agree in number and fit the batch size")
    n_graph = batch_size + 1
    mask = np.zeros(n_graph, bool)
    mask[: len(stoich)] = True
    pad = padding or BatchPadding(None, None, None, None)
    return PolySRLBatch(
        batch_stoichiometry(stoich, n_graph, dtype, pad.stoich_nodes, pad.stoich_edges),
        batch_crystals(crystals, n_graph, dtype, pad.crystal_nodes, pad.crystal_edges),
        formula_ids(formulas, n_graph),
        mask,
    )
