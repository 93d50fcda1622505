"""Element tables: symbols <-> atomic numbers and the matscholar 200-d element embedding."""

from __future__ import annotations

import functools
import gzip
import json

import numpy as np
from ase.data import atomic_numbers as _ASE_NUMBERS
from ase.data import chemical_symbols as _ASE_SYMBOLS

from jaxmat.resources import resource_path

MATSCHOLAR_DIM = 200


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol ('Fe' -> 26). Raises KeyError for an unknown symbol."""
    if symbol not in _ASE_NUMBERS or symbol == "X":
        raise KeyError(f"unknown element symbol {symbol!r}")
    return int(_ASE_NUMBERS[symbol])


def element_symbol(number: int) -> str:
    """Element symbol of an atomic number (26 -> 'Fe')."""
    if not 1 <= int(number) < len(_ASE_SYMBOLS):
        raise KeyError(f"unknown atomic number {number}")
    return _ASE_SYMBOLS[int(number)]


@functools.lru_cache(maxsize=1)
def matscholar_table() -> np.ndarray:
    """Matscholar embedding indexed by atomic number: float64 array (Zmax+1, 200).

    Row 0 and rows of elements without an embedding are NaN, so a lookup of an element the
    table does not cover is caught by :func:`has_matscholar`.
    """
    with gzip.open(resource_path("matscholar200.json.gz"), "rt") as fh:
        vectors = json.load(fh)
    numbers = {atomic_number(sym): np.asarray(vec, dtype=np.float64) for sym, vec in vectors.items()}
    table = np.full((max(numbers) + 1, MATSCHOLAR_DIM), np.nan)
    for z, vec in numbers.items():
        table[z] = vec
    table.setflags(write=False)
    return table


def has_matscholar(number: int) -> bool:
    """Whether the matscholar table has a vector for this atomic number."""
    table = matscholar_table()
    return 0 < number < len(table) and bool(np.isfinite(table[number, 0]))
