"""Content fingerprints of structure lists, so a resumed command can tell it was given the same input."""

from __future__ import annotations

import hashlib

import numpy as np


def fingerprint(structures) -> str:
    """sha256 of every structure's atomic numbers, positions, cell and pbc, in order (not the file's name)."""
    digest = hashlib.sha256()
    for atoms in structures:
        digest.update(np.int64(len(atoms)).tobytes())
        for array, dtype in ((atoms.numbers, np.int64), (atoms.positions, np.float64),
                             (atoms.cell.array, np.float64), (atoms.pbc, np.bool_)):
            digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()
