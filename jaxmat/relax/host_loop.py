"""The host-driven relaxation loop, for any force field (the mace-torch bridge, CHGNet, an ASE calculator, or JAX
ones on request).

Each iteration evaluates the force field once for the running batch (:class:`jaxmat.relax.evaluation.BatchEvaluation`:
out-of-memory halves the batch, numerical failures fail single structures, anything else stops the run naming
the structures), lets a line-search optimizer take the evaluation into its searches
(:meth:`LBFGSLineSearch.advance`), judges every system with the device loop's rule
(:func:`jaxmat.relax.status.decide`), retires the finished ones, refills the freed capacity from the queue, and takes
one jit-compiled optimizer step for the rest. Padded shapes are fixed for the run, so the step compiles once.

Cells relax through the device loop's cell filter (:class:`jaxmat.relax.cell.CellFilter`, ASE's Frechet and Exp
filters in JAX), called on all running systems at once at the fixed capacities. ASE applies the structures'
constraints itself (``set_cell``/``set_positions``, constraint-adjusted forces and stress), as its filters do;
where constraints or a strain mask change what the optimizer set, its rows are read back, as ASE's optimizers do.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmat.padding import pad
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.evaluation import BatchEvaluation, finite as all_finite
from jaxmat.relax.results import attach
from jaxmat.relax.scheduler import Capacities, admit, padded_rows
from jaxmat.relax.status import RUNNING, STATUS_NAMES, decide, message


class Slot:
    """One running structure: its working Atoms (owned), optimizer rows (atoms, plus 3 cell rows with a cell
    filter) and steps taken."""

    __slots__ = ("index", "atoms", "original_cell", "n_atoms", "n_rows", "steps", "read_back", "constrained")

    def __init__(self, index, atoms, cell: CellFilter | None):
        self.index, self.atoms, self.steps = index, atoms.copy(), 0
        self.original_cell = np.asarray(atoms.cell[:], float)
        self.constrained = bool(self.atoms.constraints)
        self.read_back = self.constrained or (cell is not None and cell.mask is not None)
        self.n_atoms = len(atoms)
        self.n_rows = self.n_atoms + (3 if cell else 0)

    def adjusted(self, energy, forces, stress):
        """Forces (eV/Å) and stress (3, 3 eV/Å^3, or None) as the structure's ASE constraints leave them."""
        if not self.constrained:
            return forces, stress
        attach(self.atoms, energy, forces, stress)
        return self.atoms.get_forces(), None if stress is None else self.atoms.get_stress(voigt=False)


class HostCells:
    """The cell filter's batched functions on all running slots at once, padded to fixed capacities (compiled once)."""

    def __init__(self, cell: CellFilter, atom_capacity: int, system_capacity: int):
        self.cell, self.atoms, self.systems = cell, atom_capacity, system_capacity + 1
        self.geometry = jax.jit(cell.positions_and_cells)
        self.read = jax.jit(cell.read_rows)
        self.forces = jax.jit(lambda f, s, c, o, r, n, i, e: (cell.generalized_forces(f, s, c, o, r, n, i), cell.energy(e, c)))

    def padded_cells(self, cells) -> np.ndarray:
        """(S, 3, 3) cells of the slots, padded with identity cells to the system capacity."""
        return np.concatenate([np.stack(cells), np.tile(np.eye(3), (self.systems - len(cells), 1, 1))])

    def systems_arrays(self, slots):
        """original cells, n_atoms, per-atom system index, all padded (padding: identity cells, one atom)."""
        extra = self.systems - len(slots)
        original = self.padded_cells([s.original_cell for s in slots])
        n_atoms = pad(np.array([s.n_atoms for s in slots], float), extra, 1.0)
        index = pad(np.repeat(np.arange(len(slots)), [s.n_atoms for s in slots]), self.atoms - sum(s.n_atoms for s in slots),
                    self.systems - 1)
        return original, n_atoms, index

    def split(self, slots, rows):
        """Atom rows (padded) and cell rows (S, 3, 3) of the concatenated per-slot optimizer rows."""
        starts = np.concatenate([[0], np.cumsum([s.n_rows for s in slots])])
        atom_rows = np.concatenate([rows[starts[k] : starts[k + 1] - 3] for k in range(len(slots))])
        cell_rows = np.stack([rows[starts[k + 1] - 3 : starts[k + 1]] for k in range(len(slots))])
        return pad(atom_rows, self.atoms - len(atom_rows)), pad(cell_rows, self.systems - len(slots))

    def join(self, slots, atom_rows, cell_rows):
        """Concatenated per-slot rows [atoms; 3 cell rows] from padded atom rows and cell rows."""
        starts = np.concatenate([[0], np.cumsum([s.n_atoms for s in slots])])
        return np.concatenate([part for k in range(len(slots)) for part in (atom_rows[starts[k] : starts[k + 1]], cell_rows[k])])

    def set_geometry(self, slots, rows):
        """Move each slot's atoms and cell to the optimizer rows as ASE's filters do (set_cell scaling the atoms, then
        set_positions; constraints adjust both); returns the rows, read back where constraints or a mask need it."""
        original, n_atoms, index = self.systems_arrays(slots)
        atom_rows, cell_rows = self.split(slots, rows)
        positions, cells = (np.asarray(a) for a in self.geometry(atom_rows, cell_rows, original, n_atoms, index))
        start = 0
        for k, slot in enumerate(slots):
            slot.atoms.set_cell(cells[k], scale_atoms=True)
            slot.atoms.set_positions(positions[start : start + slot.n_atoms])
            start += slot.n_atoms
        if not any(s.read_back for s in slots):
            return rows
        current = pad(np.concatenate([s.atoms.positions for s in slots]), self.atoms - start)
        cells = self.padded_cells([s.atoms.cell[:] for s in slots])
        read_atoms, read_cells = (np.asarray(a) for a in self.read(current, cells, original, n_atoms, index))
        read = self.join(slots, read_atoms, read_cells)
        keep = np.repeat([not s.read_back for s in slots], [s.n_rows for s in slots])
        return np.where(keep[:, None], rows, read)

    def generalized(self, slots, rows, forces, stresses, energies):
        """Per-slot generalized forces (eV/Å, atom and cell rows) and objectives E + pV (eV)."""
        original, n_atoms, index = self.systems_arrays(slots)
        _, cell_rows = self.split(slots, rows)
        extra = self.systems - len(slots)
        cells = self.padded_cells([s.atoms.cell[:] for s in slots])
        (atom_force, cell_force), objective = self.forces(pad(forces, self.atoms - len(forces)), pad(stresses, extra), cells, original,
                                                          cell_rows, n_atoms, index, pad(energies, extra))
        return self.join(slots, np.asarray(atom_force), np.asarray(cell_force)), np.asarray(objective)[: len(slots)]


def run(structures, queue, sizes, force_field, opt, *, fmax, max_steps, max_force, row_capacity, system_capacity,
        cell, counters, finish, describe, trajectories=None):
    """Relax the queued structures (indices into structures; sizes: rows each counts against row_capacity).
    finish(index, atoms, status, n_steps, energy, forces, stress, message) receives each result;
    trajectories (a dict, or None) collects (positions, energy, forces, cell) per evaluation; cell: how cells relax
    (None: fixed cells); describe(indices) names input structures in errors."""
    relax_cell = cell is not None
    step_fn = jax.jit(opt.step)
    advance_fn = jax.jit(opt.advance) if hasattr(opt, "advance") else None
    place_rows, place_systems = placements()
    row_slots = padded_rows(row_capacity, jax.device_count())  # rows of the padded arrays (the budget admits row_capacity)
    host_cells = HostCells(cell, row_slots, system_capacity) if relax_cell else None
    slots: list[Slot] = []
    rows = np.zeros((0, 3))  # optimizer coordinates of all running slots, concatenated
    row_state, system_state = opt.init_atoms(0), opt.init_systems(0)
    evaluate = BatchEvaluation(force_field, lambda ks: describe([slots[k].index for k in ks]), counters)

    def padded(energies, generalized):
        """The running slots' arrays at the fixed capacities, placed on the devices."""
        n_rows, pad_rows = len(rows), row_slots - len(rows)
        system_index = np.concatenate([np.repeat(np.arange(len(slots)), [s.n_rows for s in slots]), np.full(pad_rows, system_capacity)])
        active = np.arange(system_capacity + 1) < len(slots)
        extra = system_capacity + 1 - len(slots)
        return (place_rows({k: pad(v, pad_rows) for k, v in row_state.items()}),
                place_systems({k: pad(v, extra) for k, v in system_state.items()}),
                place_rows(pad(rows, pad_rows)), place_rows(pad(generalized, pad_rows)),
                place_rows(system_index), place_systems(active), place_systems(pad(np.asarray(energies, float), extra)), n_rows)

    while queue or slots:
        if queue and len(slots) < system_capacity:  # refill: keep running systems with their state, add new ones that fit
            admitted = admit(queue, sizes, sum(s.n_rows for s in slots), len(slots), Capacities(row_capacity, system_capacity))
            new = [Slot(index, structures[index], cell) for index in admitted]
            if new:
                fresh, fresh_systems = opt.init_atoms(sum(s.n_rows for s in new)), opt.init_systems(len(new))
                row_state = {k: np.concatenate([np.asarray(v), fresh[k]]) for k, v in row_state.items()}
                system_state = {k: np.concatenate([np.asarray(v), fresh_systems[k]]) for k, v in system_state.items()}
                start_rows = [s.atoms.positions.copy() for s in new]
                if relax_cell:
                    start_rows = [np.concatenate([p, r]) for p, r in zip(start_rows, cell.initial_cell_rows([s.n_atoms for s in new]))]
                rows = np.concatenate([rows] + start_rows)
                slots += new
        rows = host_cells.set_geometry(slots, np.asarray(rows)) if relax_cell else set_positions(slots, np.array(rows))
        energies, forces, stresses, failures = evaluate([s.atoms for s in slots], relax_cell)
        atom_starts = np.concatenate([[0], np.cumsum([s.n_atoms for s in slots])])
        finite, adjusted_forces = np.zeros(len(slots), bool), forces.copy()
        adjusted_stresses = None if stresses is None else stresses.copy()  # the raw ones are reported
        for k, slot in enumerate(slots):
            f_k, s_k = forces[atom_starts[k] : atom_starts[k + 1]], None if stresses is None else stresses[k]
            if trajectories is not None:
                trajectories.setdefault(slot.index, []).append((slot.atoms.positions.copy(), float(energies[k]), f_k.copy(),
                                                                slot.atoms.cell[:].copy()))
            finite[k] = all_finite(energies[k], f_k, s_k)
            if finite[k] and slot.constrained:
                adjusted_forces[atom_starts[k] : atom_starts[k + 1]], s_adj = slot.adjusted(float(energies[k]), f_k, s_k)
                if s_adj is not None:
                    adjusted_stresses[k] = s_adj
        clean_energies = np.where(finite, energies, 0.0)
        if relax_cell:
            clean = np.repeat(finite, [s.n_atoms for s in slots])[:, None]
            generalized, objectives = host_cells.generalized(slots, rows, np.where(clean, adjusted_forces, 0.0),
                                                             np.where(finite[:, None, None], adjusted_stresses, 0.0), clean_energies)
        else:
            generalized, objectives = np.where(np.isfinite(adjusted_forces), adjusted_forces, 0.0), clean_energies
        row_starts = np.concatenate([[0], np.cumsum([s.n_rows for s in slots])])
        largest = np.array([np.max(np.linalg.norm(generalized[row_starts[k] : row_starts[k + 1]], axis=1)) for k in range(len(slots))])
        at_point, search_failed = np.ones(len(slots), bool), np.zeros(len(slots), bool)
        if advance_fn is not None:  # the line searches take this evaluation first
            p_rows, p_systems, p_coords, p_forces, p_index, p_active, p_energy, n_rows = padded(objectives, generalized)
            p_rows, p_systems, points, lost = advance_fn(p_rows, p_systems, p_coords, p_forces, p_energy, p_index, p_active)
            row_state = {k: np.asarray(v)[:n_rows] for k, v in p_rows.items()}
            system_state = {k: np.asarray(v)[: len(slots)] for k, v in p_systems.items()}
            at_point, search_failed = np.asarray(points)[: len(slots)], np.asarray(lost)[: len(slots)]
        codes, running, lost = (np.asarray(a) for a in decide(
            np.full(len(slots), RUNNING), np.ones(len(slots), bool), ~finite, largest, search_failed, at_point,
            np.array([s.steps for s in slots]), fmax=fmax, max_force=max_force, max_steps=max_steps))
        for k, slot in enumerate(slots):  # retire finished systems
            if running[k]:
                continue
            rows_k = slice(atom_starts[k], atom_starts[k + 1])
            text = failures[k] or message(codes[k], largest[k])
            stress = stresses[k] if stresses is not None and finite[k] else None
            steps = slot.steps - int(lost[k])  # the step that could not open its search never completed
            finish(slot.index, slot.atoms.copy(), STATUS_NAMES[int(codes[k])], steps, float(energies[k]), forces[rows_k], stress, text)
        keep = np.flatnonzero(running)
        if len(keep) < len(slots):
            row_keep = np.concatenate([np.arange(row_starts[k], row_starts[k + 1]) for k in keep]) if len(keep) else np.zeros(0, int)
            row_state = {k: np.asarray(v)[row_keep] for k, v in row_state.items()}
            system_state = {k: np.asarray(v)[keep] for k, v in system_state.items()}
            rows, generalized, slots = rows[row_keep], generalized[row_keep], [slots[k] for k in keep]
            at_point, objectives = at_point[keep], objectives[keep]
        if not slots:
            continue
        # one optimizer step for the running systems, at fixed padded shapes
        p_rows, p_systems, p_coords, p_forces, p_index, p_active, p_energy, n_rows = padded(objectives, generalized)
        new_rows, new_systems, new_coordinates = step_fn(p_rows, p_systems, p_coords, p_forces, p_index, p_active, p_energy)
        row_state = {k: np.asarray(v)[:n_rows] for k, v in new_rows.items()}
        system_state = {k: np.asarray(v)[: len(slots)] for k, v in new_systems.items()}
        rows = np.asarray(new_coordinates)[:n_rows]
        for slot, point in zip(slots, at_point):
            slot.steps += int(point)  # a line search counts as one step, as in ASE


def set_positions(slots, rows):
    """Each slot's atoms to its rows (ASE's constraints adjust them); the rows, read back where constrained."""
    start = 0
    for slot in slots:
        part = slice(start, start + slot.n_rows)
        slot.atoms.set_positions(rows[part])
        if slot.read_back:
            rows[part] = slot.atoms.positions
        start += slot.n_rows
    return rows


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
