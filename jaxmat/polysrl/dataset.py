"""PolySRL training rows: (formula, stoichiometry graph, crystal graph) per structure."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from jaxmat.data.sources import load_structures
from jaxmat.data.structures import StructureRecord
from jaxmat.errors import JaxmatInputError
from jaxmat.polysrl.graphs.batching import (
    BatchPadding,
    PolySRLBatch,
    make_polysrl_batch,
    padding_for,
)
from jaxmat.polysrl.graphs.crystal import (
    CrystalGraph,
    crystal_graph,
    merge_equivalent_edges,
)
from jaxmat.polysrl.graphs.stoichiometry import StoichiometryGraph, stoichiometry_graph

log = logging.getLogger(__name__)


@dataclass
class PolySRLDataset:
    """Rows of structures with their formula graphs. ``skipped`` lists (id, reason) of rejected entries."""

    ids: list[str] = field(default_factory=list)
    formulas: list[str] = field(default_factory=list)
    stoichiometry: list[StoichiometryGraph] = field(default_factory=list)
    crystals: list[CrystalGraph] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices, batch_size: int, dtype=np.float32, padding: BatchPadding | None = None) -> PolySRLBatch:
        indices = np.asarray(indices)
        return make_polysrl_batch(
            [self.stoichiometry[i] for i in indices],
            [self.crystals[i] for i in indices],
            [self.formulas[i] for i in indices],
            batch_size,
            dtype,
            padding,
        )

    def padding(self, index_chunks) -> BatchPadding:
        """One padding for all these batches, so they share one compiled shape."""
        return padding_for(self.stoichiometry, self.crystals, index_chunks)

    def summary(self) -> str:
        polymorphs = Counter(self.formulas)
        multi = sum(1 for c in polymorphs.values() if c > 1)
        atoms = [len(c.numbers) for c in self.crystals]
        return (
            f"{len(self)} structures, {len(polymorphs)} formulas ({multi} with several structures), "
            f"{int(np.mean(atoms)) if atoms else 0} atoms on average; {len(self.skipped)} skipped"
        )


def rows_from_records(
    records: list[StructureRecord], cutoff: float = 8.0, max_neighbors: int = 12, progress: bool = False,
    merge_edges_dtype=None,
) -> PolySRLDataset:
    """Graphs for each record; records that fail (overlapping atoms, element without embedding) are skipped.

    ``merge_edges_dtype``: merge identical edges (same atoms and distance in that dtype) into one edge
    with a multiplicity — the same function, fewer edges. None keeps every edge.
    """
    dataset = PolySRLDataset()
    formula_cache: dict[str, StoichiometryGraph] = {}
    for record in tqdm(records, desc="graphs", disable=not progress, file=sys.stderr, leave=False):
        try:
            stoich = formula_cache.get(record.formula) or stoichiometry_graph(record.formula)
            formula_cache[record.formula] = stoich
            crystal = crystal_graph(record, cutoff, max_neighbors)
            if merge_edges_dtype is not None:
                crystal = merge_equivalent_edges(crystal, merge_edges_dtype)
        except JaxmatInputError as exc:
            dataset.skipped.append((record.id, str(exc)))
            continue
        dataset.ids.append(record.id)
        dataset.formulas.append(record.formula)
        dataset.stoichiometry.append(stoich)
        dataset.crystals.append(crystal)
    return dataset


def build_dataset(data_config: dict, progress: bool = False, dtype=np.float32) -> PolySRLDataset:
    """Load structures from the configured source and build their graphs, logging what was skipped."""
    report = load_structures(data_config["source"], data_config.get("path"), data_config.get("limit"))
    merge = dtype if data_config.get("merge_equivalent_edges", True) else None
    dataset = rows_from_records(report.records, float(data_config["cutoff"]), int(data_config["max_neighbors"]), progress, merge)
    dataset.skipped = report.skipped + dataset.skipped
    if dataset.skipped:
        log.warning("skipped %d of %d entries:", len(dataset.skipped), len(dataset) + len(dataset.skipped))
        for entry_id, reason in dataset.skipped[:10]:
            log.warning("  %s: %s", entry_id, reason)
    if len(dataset) == 0:
        raise JaxmatInputError(f"no usable structures from data source {data_config['source']!r}")
    return dataset
