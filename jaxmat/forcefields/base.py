"""The force-field interface shared by the relaxation engine and every potential.

A force field is called on a :class:`SystemBatch` (many periodic systems, atoms concatenated with a
per-atom system index) and returns a :class:`ForceFieldOutput`. ``supported_numbers`` lets callers
refuse structures with elements the model does not know before any work is done.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np


class SystemBatch(NamedTuple):
    """Many systems at once. positions (N, 3) Å; numbers (N,); cells (S, 3, 3) Å, rows are lattice vectors;
    pbc (S, 3); system_index (N,) in [0, S)."""

    positions: np.ndarray
    numbers: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    system_index: np.ndarray

    @property
    def n_systems(self) -> int:
        return len(self.cells)


class ForceFieldOutput(NamedTuple):
    """energy (S,) eV; forces (N, 3) eV/Å; stress (S, 3, 3) eV/Å^3 (None if not computed)."""

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None = None


class ForceField(Protocol):
    supported_numbers: frozenset[int] | None  # None: any element

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput: ...


def unsupported_elements(force_field, numbers) -> list[int]:
    """Atomic numbers in ``numbers`` that the force field does not support."""
    supported = getattr(force_field, "supported_numbers", None)
    if supported is None:
        return []
    return sorted(set(int(z) for z in np.unique(numbers)) - set(supported))
