"""Structure records: a light, framework-neutral view of one periodic crystal, with validation.

Conversions from/to ASE Atoms and pymatgen Structure live here, so every data source
produces the same record and every consumer reads the same fields.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxmat.data.elements import element_symbol
from jaxmat.data.formulas import reduced_formula
from jaxmat.errors import StructureError

MIN_INTERATOMIC_DISTANCE = 0.5  # Å; closer pairs are "overlapping atoms"


class StructureRecord(NamedTuple):
    """One crystal. Lengths in Å; cell rows are lattice vectors."""

    id: str
    formula: str  # pymatgen reduced formula of the cell content
    numbers: np.ndarray  # (n,) int64 atomic numbers
    positions: np.ndarray  # (n, 3) float64 Cartesian, Å
    cell: np.ndarray  # (3, 3) float64, Å
    pbc: np.ndarray  # (3,) bool
    source: str = ""


def make_record(id: str, numbers, positions, cell, pbc=(True, True, True), source: str = "") -> StructureRecord:
    """Build a record, checking shapes; the formula is derived from the atoms."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if len(numbers) == 0:
        raise StructureError(f"structure {id!r} has no atoms")
    if len(positions) != len(numbers):
        raise StructureError(f"structure {id!r}: {len(numbers)} atomic numbers but {len(positions)} positions")
    try:
        formula = reduced_formula(numbers)
    except KeyError as exc:
        raise StructureError(f"structure {id!r}: {exc.args[0]}") from None
    return StructureRecord(str(id), formula, numbers, positions, cell, pbc, source)


def validate_structure(record: StructureRecord) -> None:
    """Raise StructureError naming the structure if it is empty, non-finite or degenerate.

    Overlapping atoms are detected where the neighbour list is built (crystal graphs, relaxation),
    since that is where periodic distances are known.
    """
    if len(record.numbers) == 0:
        raise StructureError(f"structure {record.id!r} has no atoms")
    if not np.all(np.isfinite(record.positions)):
        bad = int(np.argwhere(~np.isfinite(record.positions))[0, 0])
        raise StructureError(f"structure {record.id!r} ({record.formula}): atom {bad} has non-finite coordinates")
    if not np.all(np.isfinite(record.cell)):
        raise StructureError(f"structure {record.id!r} ({record.formula}): cell has non-finite entries")
    if record.pbc.any() and abs(np.linalg.det(record.cell)) < 1e-6:
        raise StructureError(f"structure {record.id!r} ({record.formula}): periodic cell has zero volume")
    for z in record.numbers:
        try:
            element_symbol(int(z))
        except KeyError:
            raise StructureError(f"structure {record.id!r}: unknown atomic number {int(z)}") from None


def from_ase(atoms, id: str = "", source: str = "") -> StructureRecord:
    """Record from an ase.Atoms."""
    return make_record(id, atoms.numbers, atoms.positions, np.asarray(atoms.cell), atoms.pbc, source)


def to_ase(record: StructureRecord):
    """ase.Atoms from a record (info['id'] keeps the record id)."""
    from ase import Atoms

    atoms = Atoms(numbers=record.numbers, positions=record.positions, cell=record.cell, pbc=record.pbc)
    atoms.info["id"] = record.id
    return atoms


def from_pymatgen(structure, id: str = "", source: str = "") -> StructureRecord:
    """Record from a pymatgen Structure (ordered sites only)."""
    if not structure.is_ordered:
        raise StructureError(f"structure {id!r} has partially occupied sites; order it first")
    numbers = [site.specie.Z for site in structure]
    return make_record(id, numbers, structure.cart_coords, structure.lattice.matrix, (True, True, True), source)


def to_pymatgen(record: StructureRecord):
    """pymatgen Structure from a record."""
    from pymatgen.core import Lattice, Structure

    species = [element_symbol(int(z)) for z in record.numbers]
    return Structure(Lattice(record.cell), species, record.positions, coords_are_cartesian=True)
