"""Rock-salt high-entropy-oxide supercells.

Cations on the rock-salt cation sublattice of an n x n x n conventional MgO-type cell (8 atoms each,
a in Å), either drawn i.i.d. from molar ratios (the reference's way) or assigned exactly equimolar
in random order; then every atom is rattled (Gaussian, stdev in Å) with a seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers

DEFAULT_CATIONS = ("Mg", "Co", "Ni", "Cu", "Zn")


def rocksalt_heo(
    n: int | Sequence[int] = 2,
    cations: Sequence[str] = DEFAULT_CATIONS,
    seed: int = 0,
    a: float = 4.2,
    rattle: float = 0.1,
    mode: str = "random",
    ratios: Sequence[float] | None = None,
):
    """One supercell as ase.Atoms. mode: 'random' (i.i.d. from ``ratios``, default equal) or 'equimolar'
    (counts differ by at most one, positions shuffled)."""
    repeat = (n, n, n) if isinstance(n, int) else tuple(n)
    atoms = bulk("MgO", "rocksalt", a=a, cubic=True) * repeat
    rng = np.random.default_rng(seed)
    numbers = np.array([atomic_numbers[c] for c in cations])
    sites = np.flatnonzero(atoms.numbers != 8)
    if mode == "random":
        p = None if ratios is None else np.asarray(ratios, float) / np.sum(ratios)
        atoms.numbers[sites] = rng.choice(numbers, size=len(sites), p=p)
    elif mode == "equimolar":
        assignment = np.resize(numbers, len(sites))
        atoms.numbers[sites] = rng.permutation(assignment)
    else:
        raise ValueError(f"unknown mode {mode!r}: use random or equimolar")
    if rattle:
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    atoms.info["generator"] = f"rocksalt_heo n={repeat} mode={mode} seed={seed} rattle={rattle}"
    return atoms


def workload(name: str):
    """Benchmark workloads: W1 = 16 x 64-atom cells, W2 = 4 x 216-atom cells (seeds 0..k-1, rattle 0.1 Å)."""
    table = {"W1": (16, 2), "W2": (4, 3)}
    if name not in table:
        raise ValueError(f"unknown workload {name!r}: {sorted(table)}")
    count, n = table[name]
    return [rocksalt_heo(n, seed=seed) for seed in range(count)]
