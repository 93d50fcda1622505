"""Results of a relaxation: one :class:`RelaxResult` per input structure, recorded as each one finishes.

:class:`Results` is what both loops hand a finished system to (``record``): it attaches the final
energy, forces (and stress) to the Atoms as a SinglePointCalculator, keeps the trajectory if asked,
advances the progress bar and calls ``on_result`` (e.g. to append the frame to an output file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class RelaxResult:
    """Outcome for one structure: final atoms (positions in Å; ``atoms.get_stress()`` gives ASE's Voigt stress),
    energy (eV), forces (N, 3) eV/Å, ``stress`` the full (3, 3) tensor in eV/Å^3 with ASE's sign (positive:
    tensile; None unless cells relaxed), ``voigt_stress`` the same in ASE's Voigt order (xx, yy, zz, yz, xz, xy)."""

    index: int
    atoms: object
    status: str  # converged | max_steps | failed
    n_steps: int
    energy: float = float("nan")
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    message: str = ""
    trajectory: list = field(default_factory=list)

    @property
    def structure(self):
        """The final structure as a pymatgen Structure."""
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(self.atoms)

    @property
    def voigt_stress(self) -> np.ndarray | None:
        """The stress (6,) eV/Å^3 in ASE's Voigt order, as ``atoms.get_stress()`` returns it."""
        return None if self.stress is None else voigt(self.stress)

    @property
    def fmax(self) -> float:
        """The largest atomic force (eV/Å) of the reported (raw) forces: with constraints or a relaxing cell the
        optimizer judged the constrained forces and cell forces instead, so this may exceed the run's fmax."""
        return float(np.max(np.linalg.norm(self.forces, axis=1))) if self.forces is not None and len(self.forces) else float("nan")


def voigt(stress) -> np.ndarray:
    """A (3, 3) stress in ASE's Voigt order (xx, yy, zz, yz, xz, xy), by ASE's own conversion."""
    from ase.stress import full_3x3_to_voigt_6_stress

    return full_3x3_to_voigt_6_stress(np.asarray(stress, float))


def attach(atoms, energy: float, forces, stress=None):
    """Give ``atoms`` a SinglePointCalculator holding energy (eV), forces (eV/Å) and a (3, 3) stress (eV/Å^3, or None),
    so ASE's getters return them (the stress in Voigt order)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, **({} if stress is None else {"stress": voigt(stress)}))
    return atoms


class RelaxResults(list):
    """The results of a run in input order (a list of :class:`RelaxResult`) and its ``stats``: force_calls (batch
    evaluations), structure_evaluations, force_seconds, total_seconds, memory_halvings (host loop), and with the device
    loop loop_calls, iterations, rebuilds, reallocations, refills, compilations, compile_seconds, device_seconds,
    host_seconds."""

    def __init__(self, items=(), stats: dict | None = None):
        super().__init__(items)
        self.stats = dict(stats or {})


class Results:
    """The results of n structures in input order; ``items[i]`` stays None until structure i finished.

    bar: anything with update() (a tqdm bar); on_result(result) after each; keep_trajectory: results carry
    the frames collected in ``trajectories`` (index -> [(positions, energy, forces, cell), ...])."""

    def __init__(self, n: int, bar=None, on_result: Callable | None = None, keep_trajectory: bool = False):
        self.items: list[RelaxResult | None] = [None] * n
        self.bar, self.on_result, self.keep_trajectory = bar, on_result, keep_trajectory
        self.trajectories: dict[int, list] = {}

    def add(self, result: RelaxResult) -> None:
        """A finished structure's result -> the list, the bar, on_result."""
        if self.keep_trajectory:
            result.trajectory = self.trajectories.pop(result.index, [])
        self.items[result.index] = result
        if self.bar is not None:
            self.bar.update()
        if self.on_result:
            self.on_result(result)

    def record(self, index, atoms, status, n_steps, energy, forces, stress, message="") -> None:
        """One finished structure (atoms: its final geometry, owned by the result; stress (3, 3) or None)."""
        attach(atoms, energy, forces, stress)
        self.add(RelaxResult(index, atoms, status, n_steps, energy, forces, stress, message))
