"""What a relaxation or single-point call accepts: ASE Atoms or pymatgen Structures, checked before any work.

:func:`as_atoms` refuses ASE filters and other objects by name, :func:`check_elements` refuses elements the
force field does not know (the whole call), and :func:`problem` says why one structure cannot be evaluated
(it is then marked failed while the rest runs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmat.errors import JaxmatInputError, StructureError
from jaxmat.forcefields.base import unsupported_elements
from jaxmat.forcefields.neighbors import close_pairs
from jaxmat.relax import constraints

MIN_DISTANCE = 0.5  # Å; closer atoms are overlapping
MAX_COORDINATE = 1e6  # Å; beyond this neighbour searches fail (vesin stops the process on 1e11 Å)
MIN_CELL_VOLUME = 1e-3  # Å^3; a periodic cell at or below this is degenerate


def name_of(names: Sequence[str] | None, i: int) -> str:
    """How errors name structure i: its name if given, else "structure i"."""
    return names[i] if names else f"structure {i}"


def as_atoms(structure, name: str):
    """ase.Atoms from Atoms or a pymatgen Structure; an ASE filter or anything else is refused naming the structure."""
    from ase import Atoms

    if isinstance(structure, Atoms):
        return structure
    if hasattr(structure, "atoms") and hasattr(structure, "get_positions"):  # ASE filters (FrechetCellFilter, ...)
        raise StructureError(f"{name} is an ASE {type(structure).__name__}, not Atoms: pass the Atoms itself and let "
                             "jaxmat apply the filter (relax_cell=True, cell_filter='frechet' or 'exp' or a "
                             "jaxmat.relax.cell.CellFilter with pressure, hydrostatic_strain, constant_volume or mask)")
    try:
        from pymatgen.core import SiteCollection as Structure  # Structure, IStructure, Molecule
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        Structure = ()
    if isinstance(structure, Structure):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(structure)
    raise StructureError(f"{name} is a {type(structure).__name__}; jaxmat relaxes ase.Atoms or pymatgen Structures")


def structure_list(structures, names: Sequence[str] | None = None) -> tuple[list, list[str] | None]:
    """The structures as a list of ase.Atoms (one Atoms or pymatgen Structure is a list of one) and their names
    as a list of the same length (or None)."""
    from ase import Atoms

    single = isinstance(structures, Atoms) or any(hasattr(structures, a) for a in ("sites", "atoms"))
    structures = [structures] if single else list(structures)
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(structures):
            raise JaxmatInputError(f"names has {len(names)} entries for {len(structures)} structures")
    return [as_atoms(s, name_of(names, i)) for i, s in enumerate(structures)], names


def check_elements(structures: Sequence, force_field, names: Sequence[str] | None = None) -> None:
    """Refuse, before any work, structures with elements the force field does not know."""
    from ase.data import chemical_symbols

    for i, atoms in enumerate(structures):
        missing = unsupported_elements(force_field, atoms.numbers)
        if missing:
            raise JaxmatInputError(f"{name_of(names, i)} ({atoms.get_chemical_formula()}) contains "
                                   f"{', '.join(chemical_symbols[z] for z in missing)}, which the force field does not support")


def problem(atoms, relax_cell: bool = False) -> str | None:
    """Why the structure cannot be relaxed, or None: no atoms, non-finite or absurd coordinates, a periodic
    cell that is non-finite or flat, partial periodicity, ASE constraints jaxmat does not apply
    (:func:`jaxmat.relax.constraints.refusal`), a non-periodic structure with ``relax_cell``, overlapping atoms."""
    if len(atoms) == 0:
        return "structure has no atoms"
    if not np.all(np.isfinite(atoms.positions)):
        return "non-finite coordinates"
    if np.abs(atoms.positions).max() > MAX_COORDINATE:
        return f"coordinates beyond {MAX_COORDINATE:.0e} Å (largest {np.abs(atoms.positions).max():.3g} Å)"
    pbc = np.asarray(atoms.pbc, bool)
    if pbc.any() and not pbc.all():
        return (f"partly periodic (pbc {pbc.tolist()}): jaxmat relaxes fully periodic or non-periodic structures; "
                "make a slab fully periodic with a vacuum layer")
    if pbc.all():
        cell = np.asarray(atoms.cell[:], float)
        if not np.all(np.isfinite(cell)):
            return "non-finite cell"
        if abs(np.linalg.det(cell)) <= MIN_CELL_VOLUME:
            return f"periodic cell with (near) zero volume ({abs(np.linalg.det(cell)):.3g} Å^3)"
    elif relax_cell:
        return "relax_cell needs a periodic structure (pbc all True), this one is not periodic"
    refused = constraints.refusal(atoms)
    if refused:
        return refused
    i, j, d = close_pairs(atoms.positions, atoms.cell[:], bool(pbc.all()), MIN_DISTANCE)
    if len(d):
        k = int(np.argmin(d))
        return f"atoms {i[k]} and {j[k]} overlap (distance {d[k]:.3f} Å)"
    return None
