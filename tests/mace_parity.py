"""Shared by the JAX MACE parity tests: elements, tolerances, small LeMat-Bulk frames and the comparison."""

from __future__ import annotations

import numpy as np

HEO_NUMBERS = [8, 12, 27, 28, 29, 30]
TOLERANCE = {"energy_per_atom": 1e-6, "forces": 1e-5, "stress": 1e-6}  # eV/atom, eV/Å, eV/Å^3


def small_lemat_frames(count: int, max_atoms: int = 24):
    """The ``count`` smallest LeMat-Bulk HEO DFT frames shipped with the package (at most max_atoms atoms), as ASE."""
    from jaxmat.data.sources import load_structures
    from jaxmat.data.structures import to_ase

    records = load_structures("embedded:heo").records
    small = sorted((r for r in records if len(r.numbers) <= max_atoms), key=lambda r: len(r.numbers))
    return [to_ase(r) for r in small[:count]]


def assert_parity(torch_model, structures, head=None) -> dict:
    """The JAX MACE of the torch model (this head) within TOLERANCE of mace-torch on the structures; the differences."""
    from jaxmat.forcefields.mace.check import compare_with_torch
    from jaxmat.forcefields.mace.forcefield import MACEJax

    differences = compare_with_torch(torch_model, MACEJax.from_torch(torch_model, head=head), structures)
    for key, limit in TOLERANCE.items():
        assert differences[key] < limit, (key, differences)
    return differences


def numbers_of(frames) -> list[int]:
    return sorted(set(np.concatenate([f.numbers for f in frames]).tolist()))
