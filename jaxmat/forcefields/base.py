"""The force-field interface shared by the relaxation engine and every potential.

A force field is called on a :class:`SystemBatch` (many periodic systems, atoms concatenated with a
per-atom system index) and returns a :class:`ForceFieldOutput`. ``supported_numbers`` lets callers
refuse structures with elements the model does not know before any work is done. A force field that
also runs inside the compiled relaxation loop states so through :class:`DeviceForceField`.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, NamedTuple, Protocol, runtime_checkable

import numpy as np


DEFAULT_CHARGE, DEFAULT_SPIN = 0.0, 1.0  # total charge (e) and spin multiplicity where atoms.info has none (mace-torch's)


class SystemBatch(NamedTuple):
    """Many systems at once. positions (N, 3) Å; numbers (N,); cells (S, 3, 3) Å, rows are lattice vectors;
    pbc (S, 3); system_index (N,) in [0, S); charge (S,) total charge in e and spin (S,) total spin
    multiplicity, read from ``atoms.info["charge"]`` / ``["spin"]`` as mace-torch's calculator reads them
    (None: 0 and 1; only models that embed them use them)."""

    positions: np.ndarray
    numbers: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    system_index: np.ndarray
    charge: np.ndarray | None = None
    spin: np.ndarray | None = None

    @property
    def n_systems(self) -> int:
        return len(self.cells)

    def charges_and_spins(self) -> tuple[np.ndarray, np.ndarray]:
        """Total charge and spin multiplicity of every system (S,), with mace-torch's defaults 0 and 1."""
        charge = np.full(self.n_systems, DEFAULT_CHARGE) if self.charge is None else np.asarray(self.charge, float)
        spin = np.full(self.n_systems, DEFAULT_SPIN) if self.spin is None else np.asarray(self.spin, float)
        return charge, spin

    def system(self, s: int) -> "SystemBatch":
        """System s alone, as a batch of one."""
        mask = self.system_index == s
        pick = lambda a: None if a is None else np.asarray(a)[s:s + 1]
        return SystemBatch(self.positions[mask], self.numbers[mask], self.cells[s:s + 1], self.pbc[s:s + 1],
                           np.zeros(int(mask.sum()), int), pick(self.charge), pick(self.spin))


class ForceFieldOutput(NamedTuple):
    """energy (S,) eV; forces (N, 3) eV/Å; stress (S, 3, 3) eV/Å^3 (None if not computed)."""

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None = None


class ForceField(Protocol):
    supported_numbers: frozenset[int] | None  # None: any element

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput: ...


@runtime_checkable
class DeviceForceField(Protocol):
    """What the compiled relaxation loop (:mod:`jaxmat.relax.device_loop`) needs from a force field.

    supports_device_loop: True where the model can run there (False: the host loop runs it). cutoff: the
    interaction cutoff (Å); no pair farther apart contributes, read through :func:`cutoff_of`. device_model():
    (params, evaluate), evaluate(params, graph) -> (energy (S,) eV, forces (N, 3) eV/Å, stress (S, 3, 3) eV/Å^3),
    a pure JAX function of a graph dict of padded arrays: positions (N, 3) Å, cells (S, 3, 3) Å, species (N,),
    system_index (N,), neighbors (N, K), translations (N, K, 3) lattice vectors, mask (N, K), outgoing.
    device_species(numbers): the species index (int32) per atomic number, as evaluate's graph takes it.
    device_settings(): a hashable of everything evaluate's program depends on besides params (a compiled loop is
    keyed by it; () where nothing)."""

    supports_device_loop: bool
    cutoff: float

    def device_model(self) -> tuple[Any, Callable]: ...

    def device_species(self, numbers) -> np.ndarray: ...

    def device_settings(self) -> Hashable: ...


DEVICE_MEMBERS = ("supports_device_loop", "cutoff", "device_model", "device_species", "device_settings")


def require_device_force_field(force_field) -> DeviceForceField:
    """force_field, checked against :class:`DeviceForceField`; a TypeError naming what is missing where it is not one."""
    missing = [name for name in DEVICE_MEMBERS if not hasattr(force_field, name)]
    if missing:
        raise TypeError(f"{type(force_field).__name__} cannot run in the device loop: it has no "
                        f"{', '.join(missing)} (jaxmat.forcefields.base.DeviceForceField)")
    if not force_field.supports_device_loop:
        raise TypeError(f"{type(force_field).__name__} does not support the device loop (supports_device_loop is False)")
    return force_field


def cutoff_of(force_field) -> float:
    """The force field's interaction cutoff (Å): its ``cutoff`` (:class:`DeviceForceField`)."""
    return float(force_field.cutoff)


def unsupported_elements(force_field, numbers) -> list[int]:
    """Atomic numbers in ``numbers`` that the force field does not support."""
    supported = getattr(force_field, "supported_numbers", None)
    if supported is None:
        return []
    return sorted(set(int(z) for z in np.unique(numbers)) - set(supported))


def missing_element_counts(supported_numbers, frames) -> dict[str, int]:
    """Element -> number of frames containing it, for elements outside supported_numbers (None: any element)."""
    from collections import Counter

    from ase.data import chemical_symbols

    if supported_numbers is None:
        return {}
    known = set(int(z) for z in supported_numbers)
    counts = Counter(chemical_symbols[z] for a in frames for z in set(a.numbers.tolist()) if z not in known)
    return dict(counts.most_common())


def evaluate_frames(force_field, frames, batch_atoms: int = 2048):
    """Energies (eV, array) and forces (eV/Å, one array per frame) of ase.Atoms frames, in batches of at most
    batch_atoms atoms (a larger frame gets a batch of its own)."""
    energies, forces, start = [], [], 0
    while start < len(frames):
        stop, atoms_in_batch = start, 0
        while stop < len(frames) and (stop == start or atoms_in_batch + len(frames[stop]) <= batch_atoms):
            atoms_in_batch += len(frames[stop])
            stop += 1
        chunk = frames[start:stop]
        out = force_field(batch_from_atoms(chunk))
        offsets = np.cumsum([0] + [len(a) for a in chunk])
        energies += [float(e) for e in np.asarray(out.energy)]
        forces += [np.asarray(out.forces)[offsets[i]:offsets[i + 1]] for i in range(len(chunk))]
        start = stop
    return np.array(energies), forces


def batch_from_atoms(structures) -> SystemBatch:
    """SystemBatch of a list of ase.Atoms (atoms grouped by structure)."""
    structures = list(structures)
    return SystemBatch(
        np.concatenate([a.positions for a in structures]),
        np.concatenate([a.numbers for a in structures]),
        np.stack([np.asarray(a.cell[:]) for a in structures]),
        np.stack([a.pbc for a in structures]),
        np.concatenate([np.full(len(a), i) for i, a in enumerate(structures)]),
        _info_numbers(structures, "charge", DEFAULT_CHARGE),
        _info_numbers(structures, "spin", DEFAULT_SPIN),
    )


def _info_numbers(structures, key: str, default: float) -> np.ndarray:
    """atoms.info[key] of every structure as a number (default where absent); a clear error naming the structure."""
    values = []
    for i, atoms in enumerate(structures):
        value = atoms.info.get(key, default)
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"structure {i}: info[{key!r}] must be a number, not {value!r}") from None
    return np.asarray(values)


def ase_calculator(force_field):
    """An ASE calculator that evaluates one structure with a jaxmat force field (energy, forces, stress)."""
    from ase.calculators.calculator import Calculator, all_changes

    class JaxmatCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            out = force_field(batch_from_atoms([self.atoms]), compute_stress="stress" in properties)
            self.results = {"energy": float(out.energy[0]), "free_energy": float(out.energy[0]), "forces": np.asarray(out.forces)}
            if out.stress is not None:
                from ase.stress import full_3x3_to_voigt_6_stress

                self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out.stress[0]))

    return JaxmatCalculator()
