"""The host-driven relaxation loop, for any force field (the mace-torch bridge, CHGNet, or JAX ones on request).

Each iteration evaluates the force field once for the whole batch, lets a line-search optimizer take
the evaluation into its searches (:meth:`LBFGSLineSearch.advance`), retires systems that converged
(max force < fmax, eV/Å, cell rows included), hit max_steps (both judged only where the optimizer
stands at one of its points) or failed (non-finite energy/forces/stress, exploding forces, a failed
line search), refills the freed capacity from the queue, and takes one jit-compiled optimizer step
for the rest. Padded shapes are fixed for the run, so the step compiles once. Cells relax through
ASE's FrechetCellFilter or ExpCellFilter per system, and ASE applies the structures' constraints itself (the
device loop has the same math in JAX, :mod:`jaxmat.relax.cell`, :mod:`jaxmat.relax.constraints`); where
constraints or a strain mask change what the optimizer set, its rows are read back, as ASE's optimizers do.
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from jaxmat.forcefields.base import SystemBatch, batch_from_atoms
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.scheduler import Capacities, admit

log = logging.getLogger(__name__)


class Slot:
    """One running structure: its working Atoms, optional cell filter, rows of optimizer coordinates."""

    __slots__ = ("index", "atoms", "cell_filter", "n_atoms", "n_rows", "steps", "pressure", "read_back")

    def __init__(self, index, atoms, cell: CellFilter | None):
        self.index, self.atoms, self.steps = index, atoms.copy(), 0
        self.cell_filter = cell.ase_filter(self.atoms) if cell else None
        self.pressure = cell.scalar_pressure if cell else 0.0  # eV/Å^3
        self.read_back = bool(self.atoms.constraints) or (cell is not None and cell.mask is not None)
        self.n_atoms = len(atoms)
        self.n_rows = self.n_atoms + (3 if cell else 0)

    def coordinates(self) -> np.ndarray:
        """Optimizer coordinates: positions (Å), plus 3 cell rows (log deformation, scaled) with a cell filter."""
        return self.cell_filter.get_positions() if self.cell_filter else self.atoms.positions.copy()

    def set_coordinates(self, rows: np.ndarray) -> None:
        if self.cell_filter:
            self.cell_filter.set_positions(rows)
        else:
            self.atoms.set_positions(rows)  # ASE's constraints adjust the new positions

    def objective(self, energy: float) -> float:
        """What the optimizer minimises (eV): the energy, plus p V with a pressure."""
        return energy + self.pressure * self.atoms.get_volume() if self.pressure else energy

    def generalized_forces(self, energy, forces, stress) -> np.ndarray:
        """Forces on the optimizer coordinates (eV/Å; cell rows from the stress as in ASE's filter)."""
        if not self.cell_filter:
            forces = forces.copy()
            for constraint in self.atoms.constraints:
                constraint.adjust_forces(self.atoms, forces)
            return forces
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress

        self.atoms.calc = SinglePointCalculator(self.atoms, energy=energy, forces=forces, stress=full_3x3_to_voigt_6_stress(stress))
        return self.cell_filter.get_forces()


def run(structures, queue, sizes, force_field, opt, *, fmax, max_steps, max_force, row_capacity, system_capacity,
        cell, counters, finish, trajectories=None):
    """Relax the queued structures (indices into structures; sizes: rows each counts against row_capacity).
    finish(index, atoms, status, n_steps, energy, forces, stress, message) receives each result;
    trajectories (a dict, or None) collects (positions, energy, forces, cell) per evaluation; cell: how cells relax
    (None: fixed cells)."""
    relax_cell = cell is not None
    step_fn = jax.jit(opt.step)
    advance_fn = jax.jit(opt.advance) if hasattr(opt, "advance") else None
    place_rows, place_systems = placements()
    slots: list[Slot] = []
    rows = np.zeros((0, 3))  # optimizer coordinates of all running slots, concatenated
    row_state, system_state = opt.init_atoms(0), opt.init_systems(0)

    def padded(energies, generalized):
        """The running slots' arrays at the fixed capacities, placed on the devices."""
        n_rows, pad_rows = len(rows), row_capacity - len(rows)
        system_index = np.concatenate([np.repeat(np.arange(len(slots)), [s.n_rows for s in slots]), np.full(pad_rows, system_capacity)])
        active = np.arange(system_capacity + 1) < len(slots)
        return (place_rows({k: pad_rows_to(np.asarray(v), row_capacity) for k, v in row_state.items()}),
                place_systems({k: pad_rows_to(np.asarray(v), system_capacity + 1) for k, v in system_state.items()}),
                place_rows(pad_rows_to(rows, row_capacity)), place_rows(pad_rows_to(np.concatenate(generalized), row_capacity)),
                place_rows(system_index), place_systems(active),
                place_systems(pad_rows_to(np.asarray(energies, float), system_capacity + 1)),
                n_rows)

    while queue or slots:
        if queue and len(slots) < system_capacity:  # refill: keep running systems with their state, add new ones that fit
            admitted = admit(queue, sizes, sum(s.n_rows for s in slots), len(slots), Capacities(row_capacity, system_capacity))
            new = [Slot(index, structures[index], cell) for index in admitted]
            if new:
                fresh, fresh_systems = opt.init_atoms(sum(s.n_rows for s in new)), opt.init_systems(len(new))
                row_state = {k: np.concatenate([np.asarray(v), fresh[k]]) for k, v in row_state.items()}
                system_state = {k: np.concatenate([np.asarray(v), fresh_systems[k]]) for k, v in system_state.items()}
                rows = np.concatenate([rows] + [s.coordinates() for s in new])
                slots += new
        row_starts = np.concatenate([[0], np.cumsum([s.n_rows for s in slots])])
        rows = np.array(rows)  # writable: read-back rows replace what the optimizer set
        for k, slot in enumerate(slots):
            slot.set_coordinates(rows[row_starts[k] : row_starts[k + 1]])
            if slot.read_back:
                rows[row_starts[k] : row_starts[k + 1]] = slot.coordinates()
        batch = batch_from_atoms([s.atoms for s in slots])
        counters["force_calls"] += 1
        counters["structure_evaluations"] += len(slots)
        force_started = time.perf_counter()
        try:
            out = force_field(batch, compute_stress=relax_cell)
            energies, forces = np.asarray(out.energy, np.float64), np.asarray(out.forces, np.float64)
            stresses = None if out.stress is None else np.asarray(out.stress, np.float64)
        except Exception as exc:  # a whole-batch failure: isolate by evaluating one system at a time
            energies, forces, stresses = evaluate_one_by_one(force_field, batch, exc, relax_cell)
        counters["force_seconds"] += time.perf_counter() - force_started
        atom_starts = np.concatenate([[0], np.cumsum([s.n_atoms for s in slots])])
        finite, generalized = [], []
        for k, slot in enumerate(slots):
            f_k, e_k = forces[atom_starts[k] : atom_starts[k + 1]], float(energies[k])
            s_k = None if stresses is None else stresses[k]
            if trajectories is not None:
                trajectories.setdefault(slot.index, []).append((slot.atoms.positions.copy(), e_k, f_k.copy(), slot.atoms.cell[:].copy()))
            finite.append(np.isfinite(e_k) and np.all(np.isfinite(f_k)) and (s_k is None or np.all(np.isfinite(s_k))))
            generalized.append(slot.generalized_forces(e_k, f_k, s_k) if finite[k] else np.zeros((slot.n_rows, 3)))
        objectives = np.array([slot.objective(float(e)) if ok else 0.0 for slot, e, ok in zip(slots, energies, finite)])  # E + pV
        at_point, search_failed = np.ones(len(slots), bool), np.zeros(len(slots), bool)
        if advance_fn is not None:  # the line searches take this evaluation first
            p_rows, p_systems, p_coords, p_forces, p_index, p_active, p_energy, n_rows = padded(objectives,
                                                                                                generalized)
            p_rows, p_systems, points, lost = advance_fn(p_rows, p_systems, p_coords, p_forces, p_energy, p_index, p_active)
            row_state = {k: np.asarray(v)[:n_rows] for k, v in p_rows.items()}
            system_state = {k: np.asarray(v)[: len(slots)] for k, v in p_systems.items()}
            at_point, search_failed = np.asarray(points)[: len(slots)], np.asarray(lost)[: len(slots)]
        keep, kept_forces = [], []
        for k, slot in enumerate(slots):  # retire finished systems
            f_k, e_k = forces[atom_starts[k] : atom_starts[k + 1]], float(energies[k])
            s_k = None if stresses is None else stresses[k]
            done = lambda status, message="": finish(slot.index, slot.atoms.copy(), status, slot.steps, e_k, f_k, s_k, message)
            if not finite[k]:
                finish(slot.index, slot.atoms.copy(), "failed", slot.steps, e_k, f_k, None, "non-finite energy, forces or stress")
                continue
            g_max = float(np.max(np.linalg.norm(generalized[k], axis=1)))
            if g_max > max_force:
                done("failed", f"exploding forces (max {g_max:.3g} eV/Å)")
            elif search_failed[k]:  # the step that could not open its search never completed: ASE does not count it
                finish(slot.index, slot.atoms.copy(), "failed", slot.steps - 1, e_k, f_k, s_k,
                       "line search failed (ASE raises 'LineSearch failed!')")
            elif at_point[k] and g_max < fmax:
                done("converged")
            elif at_point[k] and slot.steps >= max_steps:
                done("max_steps")
            else:
                keep.append(k)
                kept_forces.append(generalized[k])
        if len(keep) < len(slots):
            row_keep = np.concatenate([np.arange(row_starts[k], row_starts[k + 1]) for k in keep]) if keep else np.zeros(0, int)
            row_state = {k: np.asarray(v)[row_keep] for k, v in row_state.items()}
            system_state = {k: np.asarray(v)[np.asarray(keep, int)] for k, v in system_state.items()}
            rows, slots = rows[row_keep], [slots[k] for k in keep]
            at_point, objectives = at_point[np.asarray(keep, int)], objectives[np.asarray(keep, int)]
        if not slots:
            continue
        # one optimizer step for the running systems, at fixed padded shapes
        p_rows, p_systems, p_coords, p_forces, p_index, p_active, p_energy, n_rows = padded(objectives, kept_forces)
        new_rows, new_systems, new_coordinates = step_fn(p_rows, p_systems, p_coords, p_forces, p_index, p_active, p_energy)
        row_state = {k: np.asarray(v)[:n_rows] for k, v in new_rows.items()}
        system_state = {k: np.asarray(v)[: len(slots)] for k, v in new_systems.items()}
        rows = np.asarray(new_coordinates)[:n_rows]
        for slot, point in zip(slots, at_point):
            slot.steps += int(point)  # a line search counts as one step, as in ASE


def placements():
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


def pad_rows_to(array: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((rows - len(array),) + array.shape[1:], array.dtype)])


def evaluate_one_by_one(force_field, batch: SystemBatch, error: Exception, compute_stress: bool = False):
    """Per-system evaluation after a batch call failed: failing systems get NaN and are marked failed."""
    log.warning("batch force evaluation failed (%s); evaluating systems one by one", error)
    energies = np.full(batch.n_systems, np.nan)
    forces = np.full_like(batch.positions, np.nan)
    stresses = np.full((batch.n_systems, 3, 3), np.nan) if compute_stress else None
    for s in range(batch.n_systems):
        mask = batch.system_index == s
        single = batch.system(s)
        try:
            out = force_field(single, compute_stress=compute_stress)
            energies[s], forces[mask] = out.energy[0], out.forces
            if compute_stress:
                stresses[s] = out.stress[0]
        except Exception as exc:
            log.warning("system %d failed: %s", s, exc)
    return energies, forces, stresses
