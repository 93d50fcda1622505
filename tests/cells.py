"""Small test cells shared by the relaxation tests."""

from __future__ import annotations

import numpy as np
from ase.build import bulk


def rattled_argon(seed, repeat=(2, 2, 2), a=5.3, strained=False):
    """fcc argon (cubic cell times repeat), rattled 0.1 Å; strained: a sheared cell, squeezed 3 % along z."""
    atoms = bulk("Ar", "fcc", a=a, cubic=True) * repeat
    atoms.rattle(0.1, seed=seed)
    if strained:
        atoms.set_cell(atoms.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.97]]), scale_atoms=True)
    return atoms


def ase_cell_filter(cell, atoms):
    """ASE's own filter with a jaxmat CellFilter's options around ``atoms``: the reference the JAX filter is checked on."""
    import warnings

    from ase.filters import ExpCellFilter, FrechetCellFilter

    options = dict(mask=None if cell.mask is None else list(cell.mask), hydrostatic_strain=cell.hydrostatic_strain,
                   constant_volume=cell.constant_volume, scalar_pressure=cell.scalar_pressure)
    if cell.kind == "frechet":
        return FrechetCellFilter(atoms, **options)
    with warnings.catch_warnings():  # ASE deprecates ExpCellFilter; the reference study relaxed with it
        warnings.simplefilter("ignore", DeprecationWarning)
        return ExpCellFilter(atoms, **options)
