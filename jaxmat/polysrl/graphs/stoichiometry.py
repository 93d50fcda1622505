"""Stoichiometry graph of a formula: one node per distinct element, complete graph with self-loops."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxmat.data.elements import matscholar_table
from jaxmat.data.formulas import ParsedFormula, parse_formula


class StoichiometryGraph(NamedTuple):
    """numbers (u,) ascending atomic numbers; counts (u,) amounts as written; features (u, 200) matscholar;
    senders/receivers (u*u,) the ordered pairs (0,0), (0,1), ... including self-loops."""

    formula: str
    numbers: np.ndarray
    counts: np.ndarray
    features: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray


def stoichiometry_graph(formula: str | ParsedFormula) -> StoichiometryGraph:
    """Build the graph of a formula (raises FormulaError for bad input)."""
    parsed = parse_formula(formula) if isinstance(formula, str) else formula
    u = len(parsed.numbers)
    nodes = np.arange(u)
    return StoichiometryGraph(
        parsed.formula,
        parsed.numbers,
        parsed.counts,
        matscholar_table()[parsed.numbers],
        np.repeat(nodes, u),
        np.tile(nodes, u),
    )
