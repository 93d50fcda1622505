"""Any ASE calculator as a jaxmat force field: EMT, a DFT code's calculator or a user's own, in the host loop.

``CalculatorForceField(EMT())`` evaluates each system of a :class:`jaxmat.forcefields.base.SystemBatch` in turn
with the calculator (ASE has no batch call), so ``relax(structures, CalculatorForceField(calc))`` gets jaxmat's
batched optimizers, cell filters, constraints and failure handling around it. (The other way round,
:func:`jaxmat.forcefields.base.ase_calculator` wraps a jaxmat force field as an ASE calculator.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxmat.forcefields.base import ForceFieldOutput, SystemBatch


class CalculatorForceField:
    """A host-loop force field from an ASE calculator (one instance shared by all structures), or from a factory
    ``make_calculator()`` called once per structure evaluation for calculators that must not be shared.

    supported_numbers: the atomic numbers the calculator handles (None: not checked before the run; e.g.
    ``ase.calculators.emt.EMT`` knows Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O). Charge and spin from the batch are
    put in ``atoms.info`` ("charge", "spin") for calculators that read them. Units: eV, eV/Å, eV/Å^3.

    The calculator sees what a :class:`SystemBatch` carries: numbers, positions, cell, pbc, charge and spin. Per-atom
    extras of the input structures (initial magnetic moments, initial charges, tags, other ``info``) do not reach
    it; set them on the calculator itself (e.g. a DFT calculator's own magnetisation keywords)."""

    supports_device_loop = False

    def __init__(self, calculator=None, *, make_calculator: Callable | None = None, supported_numbers=None):
        if (calculator is None) == (make_calculator is None):
            raise ValueError("give an ASE calculator or make_calculator (a function returning one), not both or neither")
        self.calculator, self.make_calculator = calculator, make_calculator
        self.supported_numbers = None if supported_numbers is None else frozenset(int(z) for z in supported_numbers)

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput:
        from ase import Atoms

        charges, spins = batch.charges_and_spins()
        energies, stresses = np.zeros(batch.n_systems), np.zeros((batch.n_systems, 3, 3))
        forces = np.zeros_like(np.asarray(batch.positions, float))
        for s in range(batch.n_systems):
            mask = np.asarray(batch.system_index) == s
            atoms = Atoms(numbers=np.asarray(batch.numbers)[mask], positions=np.asarray(batch.positions)[mask],
                          cell=np.asarray(batch.cells)[s], pbc=np.asarray(batch.pbc)[s], info={"charge": charges[s], "spin": spins[s]})
            atoms.calc = self.calculator if self.make_calculator is None else self.make_calculator()
            energies[s] = atoms.get_potential_energy()
            forces[mask] = atoms.get_forces()
            if compute_stress:
                stresses[s] = atoms.get_stress(voigt=False)
        return ForceFieldOutput(energies, forces, stresses if compute_stress else None)
