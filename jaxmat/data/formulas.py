"""Chemical formulas -> (atomic numbers, counts), with clear errors for bad input."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from jaxmat.data.elements import atomic_number, has_matscholar
from jaxmat.errors import FormulaError


class ParsedFormula(NamedTuple):
    """A formula as the stoichiometry encoder sees it.

    numbers: atomic numbers of the distinct elements, ascending (int64, shape (u,)).
    counts: amount of each element as written in the formula (float64, shape (u,)); not normalised.
    """

    formula: str
    numbers: np.ndarray
    counts: np.ndarray


def parse_formula(formula: str, *, require_embedding: bool = True) -> ParsedFormula:
    """Parse a formula such as 'Fe2O3', 'Ag(AuS)2' or 'Fe0.5Ni0.5O'.

    Counts are kept as written (fractional or non-reduced counts are allowed). Raises
    FormulaError naming the formula when it is empty, malformed, has a non-positive or
    non-finite amount, or names an element that is unknown (or, with require_embedding,
    has no matscholar vector).
    """
    from pymatgen.core import Composition

    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError(f"empty formula: {formula!r}")
    _check_amounts(formula)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            amounts = Composition(formula.strip()).get_el_amt_dict()
    except Exception as exc:  # pymatgen raises ValueError and friends with terse messages
        raise FormulaError(f"malformed formula {formula!r}: {exc}") from None
    if not amounts:
        raise FormulaError(f"formula {formula!r} contains no elements")
    numbers, counts = [], []
    for symbol, amount in amounts.items():
        try:
            z = atomic_number(symbol)
        except KeyError:
            raise FormulaError(f"unknown element {symbol!r} in formula {formula!r}") from None
        if require_embedding and not has_matscholar(z):
            raise FormulaError(f"element {symbol!r} in formula {formula!r} has no matscholar embedding")
        if not (math.isfinite(amount) and amount > 0):
            raise FormulaError(f"amount {amount} of {symbol!r} in formula {formula!r} is not a positive number")
        numbers.append(z)
        counts.append(float(amount))
    order = np.argsort(numbers, kind="stable")
    return ParsedFormula(formula, np.asarray(numbers, np.int64)[order], np.asarray(counts, np.float64)[order])


def _check_amounts(formula: str) -> None:
    """Refuse zero, negative, tiny or non-finite amounts as written (pymatgen's Composition silently drops
    an element written with amount 0 or below 1e-8, e.g. 'Fe0O' -> 'O', and refuses a negative one
    without naming it)."""
    from pymatgen.core import Composition

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            written = Composition()._parse_formula(formula.strip())  # amounts as written, zeros kept
    except Exception:  # malformed: reported by the full parse
        return
    for symbol, amount in written.items():
        if not (math.isfinite(amount) and amount > 0):
            raise FormulaError(f"amount {amount:g} of {symbol!r} in formula {formula!r} is not a positive number")
        if amount < Composition.amount_tolerance:  # pymatgen would silently drop the element
            raise FormulaError(f"amount {amount:g} of {symbol!r} in formula {formula!r} is too small "
                               f"(below {Composition.amount_tolerance:g})")


def reduced_formula(numbers) -> str:
    """pymatgen's reduced formula of a list of atomic numbers (one per site), e.g. [8, 12] -> 'MgO'."""
    from pymatgen.core import Composition

    from jaxmat.data.elements import element_symbol

    symbols, counts = np.unique(np.asarray(numbers), return_counts=True)
    return Composition({element_symbol(z): int(c) for z, c in zip(symbols, counts)}).reduced_formula
