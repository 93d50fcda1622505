"""The relaxation runner: a queue of structures, a batch bounded by an atom budget, in-flight batching.

Each iteration evaluates the force field once for the whole batch, retires systems that converged
(max atomic force < fmax, eV/Å), hit max_steps or failed (non-finite energy/forces, exploding
forces), refills the freed capacity from the queue, and takes one jit-compiled optimizer step for
the rest. Padded shapes are fixed for the run, so the step compiles once.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from jaxmat.errors import JaxmatInputError
from jaxmat.precision import scoped_by
from jaxmat.forcefields.base import SystemBatch, batch_from_atoms, unsupported_elements
from jaxmat.relax.optimizers import FIRE, LBFGS, make_optimizer

log = logging.getLogger(__name__)

MAX_FORCE = 1e4  # eV/Å; beyond this the structure is treated as exploded
MIN_DISTANCE = 0.5  # Å; closer atoms are overlapping


@dataclass
class RelaxResult:
    """Outcome for one structure: final atoms (positions in Å), energy (eV), forces (eV/Å)."""

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
    def fmax(self) -> float:
        return float(np.max(np.linalg.norm(self.forces, axis=1))) if self.forces is not None and len(self.forces) else float("nan")


def check_elements(structures: Sequence, force_field, names: Sequence[str] | None = None) -> None:
    """Refuse, before any work, structures with elements the force field does not know."""
    from ase.data import chemical_symbols

    for i, atoms in enumerate(structures):
        missing = unsupported_elements(force_field, atoms.numbers)
        if missing:
            name = names[i] if names else f"structure {i}"
            raise JaxmatInputError(f"{name} ({atoms.get_chemical_formula()}) contains {', '.join(chemical_symbols[z] for z in missing)}, "
                                   f"which the force field does not support")


def overlap_message(atoms) -> str | None:
    """Why the structure cannot be relaxed (overlapping atoms, non-finite coordinates), or None."""
    from vesin import NeighborList

    if len(atoms) == 0:
        return "structure has no atoms"
    if not np.all(np.isfinite(atoms.positions)):
        return "non-finite coordinates"
    periodic = bool(atoms.pbc.all())
    i, j, d = NeighborList(cutoff=MIN_DISTANCE, full_list=False).compute(
        atoms.positions, atoms.cell[:] if periodic else np.zeros((3, 3)), periodic, "ijd")
    if len(d):
        k = int(np.argmin(d))
        return f"atoms {i[k]} and {j[k]} overlap (distance {d[k]:.3f} Å)"
    return None


class _Slot:
    """One running structure: its working Atoms, optional cell filter, rows of optimizer coordinates."""

    __slots__ = ("index", "atoms", "cell_filter", "n_atoms", "n_rows", "steps")

    def __init__(self, index, atoms, relax_cell: bool):
        from ase.filters import FrechetCellFilter

        self.index, self.atoms, self.steps = index, atoms.copy(), 0
        self.cell_filter = FrechetCellFilter(self.atoms) if relax_cell else None
        self.n_atoms = len(atoms)
        self.n_rows = self.n_atoms + (3 if relax_cell else 0)

    def coordinates(self) -> np.ndarray:
        """Optimizer coordinates: positions (Å), plus 3 cell rows (log deformation, scaled) with a cell filter."""
        return self.cell_filter.get_positions() if self.cell_filter else self.atoms.positions.copy()

    def set_coordinates(self, rows: np.ndarray) -> None:
        if self.cell_filter:
            self.cell_filter.set_positions(rows)
        else:
            self.atoms.positions = rows

    def generalized_forces(self, energy, forces, stress) -> np.ndarray:
        """Forces on the optimizer coordinates (eV/Å; cell rows from the stress as in ASE's filter)."""
        if not self.cell_filter:
            return forces
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress

        self.atoms.calc = SinglePointCalculator(self.atoms, energy=energy, forces=forces, stress=full_3x3_to_voigt_6_stress(stress))
        return self.cell_filter.get_forces()


@scoped_by("float64")
def relax(
    structures: Sequence,
    force_field,
    optimizer: str | FIRE | LBFGS = "fire",
    fmax: float = 0.05,
    max_steps: int = 300,
    max_atoms: int | None = None,
    max_systems: int | None = None,
    progress: bool = True,
    on_result: Callable[[RelaxResult], None] | None = None,
    keep_trajectory: bool = False,
    names: Sequence[str] | None = None,
    stats: dict | None = None,
    float64: bool = True,
    relax_cell: bool = False,
    loop: str = "auto",
    skin: float = 0.3,
    max_inner: int = 50,
) -> list[RelaxResult]:
    """Relax ASE Atoms (or pymatgen Structures) with per-system convergence; results in input order.

    max_atoms: atom budget of one batch (default: all atoms, at most 4096). max_systems: most systems
    at once. on_result: called as each structure finishes (e.g. to append it to an output file).
    stats: if given, filled with force_calls (batch evaluations), structure_evaluations, force_seconds
    and total_seconds. float64 (default): optimizer arithmetic in double precision (the call runs in
    jaxmat.precision.float64_scope; the process-wide JAX setting is left alone).
    relax_cell: relax the cell too, through ASE's FrechetCellFilter per system (needs stress); then
    fmax also bounds the filter's cell forces, as in ASE.
    loop: "device" runs evaluation, checks and optimizer steps in one compiled loop on the accelerator
    (:mod:`jaxmat.relax.device_loop`; JAX force fields: JAX MACE, pair potentials; fixed cells, no
    trajectories), "host" the host-driven loop (any force field), "auto" (default) the device loop where
    it applies. skin (Å): neighbour-list margin of the device loop, rebuilt when an atom moved skin / 2;
    max_inner: most iterations per device call (results and progress are reported between calls).
    stats then also holds loop_calls, iterations, rebuilds, compilations, device_seconds, host_seconds.
    """
    import time

    from ase.calculators.singlepoint import SinglePointCalculator

    if loop not in ("auto", "device", "host"):
        raise ValueError(f"loop must be auto, device or host, not {loop!r}")
    if not skin >= 0 or int(max_inner) < 1:
        raise ValueError(f"skin must be >= 0 Å and max_inner >= 1 (got skin={skin}, max_inner={max_inner})")
    device_capable = getattr(force_field, "supports_device_loop", False) and not keep_trajectory
    if loop == "device" and not device_capable:
        raise ValueError("the device loop needs a JAX force field (JAX MACE or a pair potential) and no trajectory")
    started = time.perf_counter()
    counters = {"force_calls": 0, "structure_evaluations": 0, "force_seconds": 0.0}
    opt = make_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    structures = [_as_atoms(s) for s in structures]
    check_elements(structures, force_field, names)
    results: list[RelaxResult | None] = [None] * len(structures)
    queue = []
    for i, atoms in enumerate(structures):
        problem = overlap_message(atoms)
        if problem:
            results[i] = RelaxResult(i, atoms.copy(), "failed", 0, message=problem)
        else:
            queue.append(i)
    extra_rows = 3 if relax_cell else 0
    sizes = {i: len(structures[i]) + extra_rows for i in queue}
    if queue:
        largest = max(sizes.values())
        budget = max(largest, max_atoms or min(sum(sizes.values()), max(4096, largest)))
        quantum = int(np.lcm(64, jax.device_count()))  # rows shard evenly over all devices
        row_capacity = int(-(-budget // quantum) * quantum)
        system_capacity = max_systems or min(len(queue), max(1, row_capacity // max(1, min(sizes.values()))))
    bar = tqdm(total=len(structures), desc=f"relax ({opt.name})", unit="structure", disable=not progress, file=sys.stderr)
    for r in results:
        if r is not None:
            bar.update()
            if on_result:
                on_result(r)

    trajectories: dict[int, list] = {}

    def record(index, atoms, status, n_steps, energy, forces, stress, message=""):
        """One finished structure (atoms: its final geometry, owned by the result) -> results, bar, on_result."""
        extra = {"stress": full_3x3_to_voigt_6_stress(stress)} if stress is not None else {}
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, **extra)
        result = RelaxResult(index, atoms, status, n_steps, energy, forces, stress, message)
        if keep_trajectory:
            result.trajectory = trajectories.pop(index, [])
        results[index] = result
        bar.update()
        if on_result:
            on_result(result)

    def finish(slot, energy, forces, stress, status, message=""):
        record(slot.index, slot.atoms.copy(), status, slot.steps, energy, forces, stress, message)

    from ase.stress import full_3x3_to_voigt_6_stress

    if queue and device_capable and loop != "host":
        from jaxmat.relax.device_loop import DeviceRelaxation

        device = DeviceRelaxation(force_field, opt, fmax, max_steps, row_capacity, system_capacity, skin, max_inner, MAX_FORCE,
                                  relax_cell=relax_cell)
        counters.update(device.run(structures, queue, sizes, record))  # record(index, atoms, status, steps, energy, forces, stress, message)
        counters["force_calls"] = counters["iterations"]
        counters["force_seconds"] = counters["device_seconds"]
        bar.close()
        if stats is not None:
            stats.update(counters, total_seconds=time.perf_counter() - started)
        return results

    step_fn = jax.jit(opt.step)
    place_rows, place_systems = _placements()
    slots: list[_Slot] = []
    rows = np.zeros((0, 3))  # optimizer coordinates of all running slots, concatenated
    row_state = opt.init_atoms(0)
    system_state = opt.init_systems(0)
    while queue or slots:
        # refill: keep running systems (with their optimizer state), add new ones that fit
        if queue and len(slots) < system_capacity:
            used = sum(s.n_rows for s in slots)
            new = []
            while queue and len(slots) + len(new) < system_capacity and used + sizes[queue[0]] <= row_capacity:
                index = queue.pop(0)
                new.append(_Slot(index, structures[index], relax_cell))
                used += sizes[index]
            if new:
                fresh = opt.init_atoms(sum(s.n_rows for s in new))
                row_state = {k: np.concatenate([np.asarray(v), fresh[k]]) for k, v in row_state.items()}
                system_state = {k: np.concatenate([np.asarray(v), opt.init_systems(len(new))[k]]) for k, v in system_state.items()}
                rows = np.concatenate([rows] + [s.coordinates() for s in new])
                slots += new
        row_starts = np.concatenate([[0], np.cumsum([s.n_rows for s in slots])])
        for k, slot in enumerate(slots):
            slot.set_coordinates(rows[row_starts[k] : row_starts[k + 1]])
        batch = batch_from_atoms([s.atoms for s in slots])
        counters["force_calls"] += 1
        counters["structure_evaluations"] += len(slots)
        force_started = time.perf_counter()
        try:
            out = force_field(batch, compute_stress=relax_cell)
            energies, forces = np.asarray(out.energy, np.float64), np.asarray(out.forces, np.float64)
            stresses = None if out.stress is None else np.asarray(out.stress, np.float64)
        except Exception as exc:  # a whole-batch failure: isolate by evaluating one system at a time
            energies, forces, stresses = _evaluate_one_by_one(force_field, batch, exc, relax_cell)
        counters["force_seconds"] += time.perf_counter() - force_started
        # retire finished systems
        atom_starts = np.concatenate([[0], np.cumsum([s.n_atoms for s in slots])])
        keep, generalized = [], []
        for k, slot in enumerate(slots):
            f_k, e_k = forces[atom_starts[k] : atom_starts[k + 1]], float(energies[k])
            s_k = None if stresses is None else stresses[k]
            if keep_trajectory:
                trajectories.setdefault(slot.index, []).append((slot.atoms.positions.copy(), e_k, f_k.copy(), slot.atoms.cell[:].copy()))
            if not (np.isfinite(e_k) and np.all(np.isfinite(f_k)) and (s_k is None or np.all(np.isfinite(s_k)))):
                finish(slot, e_k, f_k, None, "failed", "non-finite energy, forces or stress")
                continue
            g_k = slot.generalized_forces(e_k, f_k, s_k)
            g_max = float(np.max(np.linalg.norm(g_k, axis=1)))
            if g_max > MAX_FORCE:
                finish(slot, e_k, f_k, s_k, "failed", f"exploding forces (max {g_max:.3g} eV/Å)")
            elif g_max < fmax:
                finish(slot, e_k, f_k, s_k, "converged")
            elif slot.steps >= max_steps:
                finish(slot, e_k, f_k, s_k, "max_steps")
            else:
                keep.append(k)
                generalized.append(g_k)
        if len(keep) < len(slots):
            row_keep = np.concatenate([np.arange(row_starts[k], row_starts[k + 1]) for k in keep]) if keep else np.zeros(0, int)
            row_state = {k: np.asarray(v)[row_keep] for k, v in row_state.items()}
            system_state = {k: np.asarray(v)[np.asarray(keep, int)] for k, v in system_state.items()}
            rows = rows[row_keep]
            slots = [slots[k] for k in keep]
        if not slots:
            continue
        # one optimizer step for the running systems, at fixed padded shapes
        n_rows = len(rows)
        pad_rows = row_capacity - n_rows
        system_index = np.concatenate([np.repeat(np.arange(len(slots)), [s.n_rows for s in slots]), np.full(pad_rows, system_capacity)])
        active = np.zeros(system_capacity + 1, bool)
        active[: len(slots)] = True
        padded_rows = {k: _pad_rows(np.asarray(v), row_capacity) for k, v in row_state.items()}
        padded_systems = {k: _pad_rows(np.asarray(v), system_capacity + 1) for k, v in system_state.items()}
        new_rows, new_systems, new_coordinates = step_fn(
            place_rows(padded_rows), place_systems(padded_systems), place_rows(_pad_rows(rows, row_capacity)),
            place_rows(_pad_rows(np.concatenate(generalized), row_capacity)), place_rows(system_index), place_systems(active),
        )
        row_state = {k: np.asarray(v)[:n_rows] for k, v in new_rows.items()}
        system_state = {k: np.asarray(v)[: len(slots)] for k, v in new_systems.items()}
        rows = np.asarray(new_coordinates)[:n_rows]
        for slot in slots:
            slot.steps += 1
    bar.close()
    if stats is not None:
        stats.update(counters, total_seconds=time.perf_counter() - started)
    return results


def _placements():
    """Functions putting row arrays sharded over all JAX devices (first axis) and system arrays replicated.

    With one device they are the identity; with several (GPUs, or CPU with
    XLA_FLAGS=--xla_force_host_platform_device_count=N) the jit-compiled step runs sharded.
    """
    devices = jax.devices()
    if len(devices) == 1:
        return (lambda tree: tree), (lambda tree: tree)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("rows",))
    rows, replicated = NamedSharding(mesh, PartitionSpec("rows")), NamedSharding(mesh, PartitionSpec())
    return (lambda tree: jax.device_put(tree, rows)), (lambda tree: jax.device_put(tree, replicated))


def _as_atoms(structure):
    """ase.Atoms from Atoms or a pymatgen Structure."""
    if hasattr(structure, "get_positions"):
        return structure
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((rows - len(array),) + array.shape[1:], array.dtype)])


def _evaluate_one_by_one(force_field, batch: SystemBatch, error: Exception, compute_stress: bool = False):
    """Per-system evaluation after a batch call failed: failing systems get NaN and are marked failed."""
    log.warning("batch force evaluation failed (%s); evaluating systems one by one", error)
    energies = np.full(batch.n_systems, np.nan)
    forces = np.full_like(batch.positions, np.nan)
    stresses = np.full((batch.n_systems, 3, 3), np.nan) if compute_stress else None
    for s in range(batch.n_systems):
        mask = batch.system_index == s
        single = SystemBatch(batch.positions[mask], batch.numbers[mask], batch.cells[s : s + 1], batch.pbc[s : s + 1], np.zeros(mask.sum(), int))
        try:
            out = force_field(single, compute_stress=compute_stress)
            energies[s], forces[mask] = out.energy[0], out.forces
            if compute_stress:
                stresses[s] = out.stress[0]
        except Exception as exc:
            log.warning("system %d failed: %s", s, exc)
    return energies, forces, stresses
