"""Single-point evaluation: energies, forces and stress of many structures with any force field, no optimizer.

``evaluate(structures, force_field)`` batches the structures by an atom budget, with the host loop's input checks
and failure rule (:mod:`jaxmat.relax.inputs`, :mod:`jaxmat.relax.evaluation`), and returns one
:class:`SinglePoint` per structure in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jaxmat.precision import scoped_by
from jaxmat.relax.evaluation import BatchEvaluation, finite
from jaxmat.relax.inputs import check_elements, name_of, problem, structure_list
from jaxmat.relax.options import check_count
from jaxmat.relax.results import attach, voigt
from jaxmat.relax.scheduler import Capacities, admit, capacities


@dataclass
class SinglePoint:
    """One structure's evaluation: ``atoms`` (a copy carrying the results as a SinglePointCalculator, so
    ``atoms.get_stress()`` gives ASE's Voigt stress), energy (eV), forces (N, 3) eV/Å, ``stress`` the full (3, 3)
    tensor in eV/Å^3 with ASE's sign (None where not computed), ``voigt_stress`` the same in ASE's Voigt order;
    status "evaluated" or "failed" with a message."""

    index: int
    atoms: object
    status: str
    energy: float = float("nan")
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    message: str = ""

    @property
    def voigt_stress(self) -> np.ndarray | None:
        """The stress (6,) eV/Å^3 in ASE's Voigt order (xx, yy, zz, yz, xz, xy)."""
        return None if self.stress is None else voigt(self.stress)


@scoped_by("float64")
def evaluate(structures, force_field, *, compute_stress: bool | None = None, max_atoms: int | None = None,
             names: Sequence[str] | None = None, float64: bool = True) -> list[SinglePoint]:
    """Energies (eV), forces (eV/Å) and stresses (eV/Å^3) of ASE Atoms or pymatgen Structures (a list, or one), in
    input order.

    compute_stress: None (default) for the fully periodic structures only; True for all (a non-periodic structure
    is then ``failed``: it has no stress); False for none. max_atoms: most atoms per force-field call (default: all,
    at most max(4096, the largest structure); a larger structure goes alone). A structure that cannot be evaluated
    (no atoms, overlapping atoms, a numerical failure of the force field, non-finite results) is ``failed`` with the
    reason while the rest are evaluated; elements the force field does not know are refused before any work
    (:class:`jaxmat.errors.JaxmatInputError`), and a force field that raises anything else stops the call
    (:class:`jaxmat.errors.ForceFieldError`, naming the structures)."""
    check_count("max_atoms", max_atoms)
    structures, names = structure_list(structures, names)
    check_elements(structures, force_field, names)
    results: list[SinglePoint | None] = [None] * len(structures)
    groups = {True: [], False: []}
    for i, atoms in enumerate(structures):
        periodic = bool(np.all(atoms.pbc))
        why = problem(atoms) or (None if periodic or compute_stress is not True else "stress needs a periodic structure")
        if why:
            results[i] = SinglePoint(i, atoms.copy(), "failed", message=why)
        else:
            groups[periodic if compute_stress is None else bool(compute_stress)].append(i)
    chunk: list[int] = []  # the structures of the current call; failures name them
    evaluation = BatchEvaluation(force_field, lambda ks: ", ".join(name_of(names, chunk[k]) for k in ks))
    for stress, queue in groups.items():
        if not queue:
            continue
        sizes = {i: len(structures[i]) for i in queue}
        capacity = capacities(sizes, max_atoms, None)
        while queue:
            chunk[:] = admit(queue, sizes, 0, 0, Capacities(capacity.rows, len(queue)))
            energies, forces, stresses, failures = evaluation([structures[i] for i in chunk], stress)
            start = 0
            for k, i in enumerate(chunk):
                atoms, f = structures[i].copy(), forces[start : start + len(structures[i])]
                start += len(atoms)
                s = None if stresses is None else stresses[k]
                if failures[k] or not finite(energies[k], f, s):
                    results[i] = SinglePoint(i, atoms, "failed", float(energies[k]), f, s,
                                             failures[k] or "non-finite energy, forces or stress")
                    continue
                results[i] = SinglePoint(i, attach(atoms, float(energies[k]), f, s), "evaluated", float(energies[k]), f, s)
    return results
