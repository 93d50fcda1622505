"""The relaxation loop on the device: force evaluation, convergence checks, optimizer steps and neighbour-list
updates of many systems in one compiled ``lax.while_loop``, for force fields with a device model (JAX
MACE, pair potentials).

One state pytree (:class:`jaxmat.relax.state.DeviceState`) holds every running system at fixed
capacities — rows (atoms), systems (the last slot collects padding rows and is never read), neighbour
slots and the on-device list's candidates (each system's own) — with the optimizer's coordinates (atom
positions, plus three cell rows per system when cells relax through :mod:`jaxmat.relax.cell`), per-row
and per-system optimizer state,
step counters, status codes and the last energies, forces and stresses. Each iteration does what one
iteration of the host loop (:mod:`jaxmat.relax.host_loop`) does, in the same order: evaluate, let a
line search take the evaluation, retire systems that converged (max force < fmax, cell rows
included; only at the optimizer's points), failed (non-finite or exploding forces, a failed line
search) or hit max_steps, then step the others with the same optimizer code (FIRE, L-BFGS,
LBFGSLineSearch), so the steps are the host loop's and ASE's. When the neighbour list may be stale
(an atom moved, or a cell changed, by enough to bring a pair from beyond cutoff + skin to within
the cutoff) it is rebuilt before the next evaluation: on the device, inside the loop
(:func:`jaxmat.forcefields.neighbors.device_neighbor_matrix`), or - the default on CPU, where vesin is the
faster - by the host after the loop returns. The model evaluates the near list, the
list's pairs within the model's cutoff at the current geometry, picked out before every evaluation
(:mod:`jaxmat.relax.lists`: fewer slots, same numbers). If a list does not fit its slots, outgoing
slots or a cell's translations, the loop returns with an overflow flag (an evaluation on a near list that
did not fit takes no step) and the host re-allocates larger capacities before the next step, so no neighbour
is ever dropped. The
loop also returns after ``max_inner`` iterations, when no system is left running, or when a system
finished while others wait in the queue (retire and refill). Capacities change only on overflow, so a
run compiles once or a few times; ``stats`` counts compilations and their seconds, list
rebuilds, re-allocations, the device loop's seconds (compilation excluded) and the host's.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import DeviceForceField, cutoff_of, require_device_force_field
from jaxmat.forcefields.neighbors import list_is_stale
from jaxmat.padding import bucket, round_up
from jaxmat.relax import constraints, geometry
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.lists import NeighborLists, device_lists, near_lists, place
from jaxmat.relax import state as packing
from jaxmat.relax.scheduler import Capacities, admit
from jaxmat.relax.status import RUNNING, STATUS_NAMES, decide, message

SKIN_OVERFLOW, CROWDED = 1, 2  # the loop's overflow codes: the rebuilt list, the near list did not fit
GRAPH_KEYS = {"positions": "positions", "cells": "cells", "species": "species", "system_index": "system_index",
              "neighbors": "near_neighbors", "translations": "near_translations", "mask": "near_mask", "outgoing": "near_outgoing"}
"""the model's graph (its key: the state's key): the model evaluates the near list (:mod:`jaxmat.relax.lists`)"""


def make_loop(optimizer, evaluate, cell: CellFilter | None, rebuild_on_device: bool = True):
    """A pure function (params, state, limits, exit_on_finish) -> (state, iterations, overflow, rebuilds, stale); limits
    holds fmax (eV/Å), max_force (eV/Å, beyond it a system has exploded), skin (Å), cutoff (Å, the skin
    list's radius: the model's cutoff + skin), model_cutoff (Å, the near list's), max_steps and max_inner. A
    stale list is rebuilt inside the loop and the near list the model evaluates follows every step; overflow: 0,
    or a list did not fit its capacities - SKIN_OVERFLOW (the rebuilt list; the host re-allocates before the next
    step) or CROWDED (the near list: that iteration's step is discarded, the host re-allocates). Without
    rebuild_on_device a stale list ends the loop instead (stale: the host rebuilds it before the next step, where
    allocation builds lists - vesin on CPU; the program compiles faster without the on-device list builder). cell: how
    cells relax (:class:`jaxmat.relax.cell.CellFilter`), None: fixed cells. Constraints (:mod:`jaxmat.relax.constraints`)
    project the forces and adjust every new geometry, whose rows are then read back as ASE does."""

    def run(params, state, limits, exit_on_finish):
        fmax, max_force, skin, max_steps, max_inner = (limits[k] for k in ("fmax", "max_force", "skin", "max_steps", "max_inner"))
        n_systems, n_rows = state.active.shape[0], state.positions.shape[0]
        symmetric = state.sym_weights.shape[1] > 0  # a system with FixSymmetry in the batch (a shape: one program each)
        index, real, row_index, row_real = state.system_index, state.row_mask, state.row_index, state.row_real

        def body(carry):
            state, iteration, _, _, rebuilds, _ = carry
            near, crowded = near_lists(state, limits["model_cutoff"], state.near_neighbors.shape[1], state.near_outgoing.shape[1])
            state = state.replace(**near)  # the pairs within the model's cutoff now; crowded: they overflow the near list
            energy, forces, stress = evaluate(params, {k: getattr(state, key) for k, key in GRAPH_KEYS.items()})
            coords = state.coords
            bad_system = ~jnp.isfinite(energy)
            held = constraints.adjust_forces(forces, state.free, state.com_mass, index, n_systems)
            held_stress = stress
            if symmetric:  # FixSymmetry: forces and stress averaged over the operations at the current cell
                weights = state.sym_weights
                has = jnp.any(weights > 0, axis=1)
                held = jnp.where(has[index][:, None], constraints.symmetrize_vectors(held, state.cells, state.sym_source,
                                                                                      state.sym_rotations, weights, index), held)
                if cell is not None:
                    held_stress = jnp.where(has[:, None, None], constraints.symmetrize_tensors(stress, state.cells,
                                                                                               state.sym_rotations, weights), stress)
            if cell is not None:
                cell_rows = coords[n_rows:].reshape(n_systems, 3, 3)
                atom_force, cell_force = cell.generalized_forces(held, held_stress, state.cells, state.original_cells,
                                                                 cell_rows, state.n_atoms, index)
                generalized = jnp.concatenate([atom_force, cell_force.reshape(-1, 3)])
                bad_system = bad_system | ~jnp.all(jnp.isfinite(stress), axis=(1, 2))
                objective = cell.energy(energy, state.cells)  # what the line search sees: E + pV
            else:
                generalized, objective = held, energy
            bad_row = row_real & ~jnp.all(jnp.isfinite(generalized), axis=-1)
            non_finite = (jax.ops.segment_sum(bad_row.astype(jnp.int32), row_index, n_systems) > 0) | bad_system
            clean = jnp.where(bad_row[:, None], 0.0, generalized)
            largest = jax.ops.segment_max(jnp.where(row_real & ~bad_row, jnp.linalg.norm(clean, axis=-1), 0.0), row_index, n_systems)
            active = state.active
            generalized = jnp.where(active[row_index][:, None], generalized, 0.0)
            atoms, systems = state.atom_state, state.system_state
            at_point, lost = jnp.ones_like(active), jnp.zeros_like(active)
            if hasattr(optimizer, "advance"):  # line searches take the evaluation first (ASE's points, failures)
                atoms, systems, at_point, lost = optimizer.advance(atoms, systems, coords, generalized,
                                                                   jnp.where(active, objective, 0.0), row_index, active)
            status, running, lost = decide(state.status, active, non_finite, largest, lost, at_point, state.steps,
                                           fmax=fmax, max_force=max_force, max_steps=max_steps)  # lost: ASE does not count its step
            atoms, systems, coords = optimizer.step(atoms, systems, coords, generalized, row_index, running, objective)
            positions, cells, coords = geometry.after_step(cell, state, coords, running, symmetric)
            evaluated = active[index][:, None]
            new = state.replace(atom_state=atoms, system_state=systems, coords=coords, positions=positions, cells=cells,
                       status=status, active=running,
                       steps=state.steps + (running & at_point).astype(state.steps.dtype) - lost.astype(state.steps.dtype),
                       energy=jnp.where(active, energy, state.energy), forces=jnp.where(evaluated, forces, state.forces),
                       stress=jnp.where(active[:, None, None], stress, state.stress), fmax=jnp.where(active, largest, state.fmax),
                       evaluations=state.evaluations + jnp.sum(active[:-1]).astype(state.evaluations.dtype))
            stale = list_is_stale(positions, state.reference, real & running[index], skin,
                                  cells, state.reference_cells, state.reach, running)
            if rebuild_on_device:
                new, overflow = jax.lax.cond(stale, rebuild, lambda s: (s, jnp.bool_(False)), new)
                to_host = jnp.bool_(False)
            else:
                overflow, to_host = jnp.bool_(False), stale & ~crowded
            new = jax.tree_util.tree_map(lambda kept, stepped: jnp.where(crowded, kept, stepped), state, new)  # nothing happened
            overflow = jnp.where(crowded, CROWDED, jnp.where(overflow, SKIN_OVERFLOW, 0)).astype(jnp.int32)
            finished = jnp.any(active & ~running)
            stop = (overflow > 0) | to_host | ~jnp.any(running) | (exit_on_finish & finished)
            rebuilt = stale & ~crowded & rebuild_on_device
            return new, iteration + 1, stop, overflow, rebuilds + rebuilt.astype(jnp.int32), to_host

        def rebuild(s):
            """The list at the new geometry, on the device (same capacities)."""
            lists, overflow = device_lists(s.positions, s.cells, s.capacity, index, limits["cutoff"], s.neighbors.shape[1],
                                           n_systems)
            return s.replace(**lists), overflow

        def cond(carry):
            _, iteration, stop, _, _, _ = carry
            return (iteration < max_inner) & ~stop

        start = (state, jnp.int32(0), jnp.bool_(False), jnp.int32(0), jnp.int32(0), jnp.bool_(False))
        state, iterations, _, overflow, rebuilds, stale = jax.lax.while_loop(cond, body, start)
        return state, iterations, overflow, rebuilds, stale

    return run


class CompiledLoop:
    """The loop of one force field and optimizer, compiled ahead of time once per shape of the state and
    kept with the force field (later runs of the same shapes compile nothing); with a persistent XLA cache
    (:mod:`jaxmat.compile_cache`) a new process reuses the compiled programs too."""

    def __init__(self, optimizer, evaluate, cell: CellFilter | None, rebuild_on_device: bool = True):
        self.jitted = jax.jit(make_loop(optimizer, evaluate, cell, rebuild_on_device))
        self.executables: dict = {}

    def __call__(self, params, state, limits, exit_on_finish: bool, counters: dict):
        leaves, structure = jax.tree_util.tree_flatten(state)
        key = (structure, tuple((leaf.shape, np.dtype(leaf.dtype).str) for leaf in leaves))
        executable = self.executables.get(key)
        if executable is None:
            started = time.perf_counter()
            executable = self.jitted.lower(params, state, limits, exit_on_finish).compile()
            counters["compilations"] += 1
            counters["compile_seconds"] += time.perf_counter() - started
            self.executables[key] = executable
        return executable(params, state, limits, exit_on_finish)


_LOOPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_loop(force_field: DeviceForceField, optimizer, evaluate, cell: CellFilter | None = None,
                  rebuild_on_device: bool = True) -> CompiledLoop:
    """The compiled loop of this force field, optimizer and modes (kept as long as the force field), also keyed by
    the force field's ``device_settings()``: a loop traced before a setting changed (e.g. a MACEJax's
    matmul_precision or head) is not reused after it."""
    loops = _LOOPS.setdefault(force_field, {})
    key = (optimizer, cell, rebuild_on_device, force_field.device_settings())
    if key not in loops:
        loops[key] = CompiledLoop(optimizer, evaluate, cell, rebuild_on_device)
    return loops[key]


@dataclass
class Running:
    """A system in the device batch: input index, its starting Atoms (cell, numbers, pbc) and atom count."""

    index: int
    atoms: object
    n_atoms: int


class DeviceRelaxation:
    """Host side of the device loop: packs systems at fixed capacities, rebuilds neighbour lists, retires
    and refills. ``finish(index, atoms, status, n_steps, energy, forces, stress, message)`` receives each
    result (stress None unless cells relax)."""

    def __init__(self, force_field, optimizer, fmax, max_steps, row_capacity, system_capacity, skin, max_inner, max_force,
                 cell: CellFilter | None = None, allocation: str = "auto", rebuild: str = "auto"):
        """allocation: where neighbour lists are built when systems join or capacities grow
        (:class:`jaxmat.relax.lists.NeighborLists`); rebuild: where a stale list is rebuilt, "device" (inside the
        loop), "host" (the loop returns, vesin rebuilds it) or "auto" (:func:`jaxmat.relax.lists.place`)."""
        force_field = require_device_force_field(force_field)  # a TypeError naming what is missing
        self.force_field, self.optimizer, self.cell, self.relax_cell = force_field, optimizer, cell, cell is not None
        self.params, evaluate = force_field.device_model()
        self.cutoff = cutoff_of(force_field) + skin
        self.atom_budget = row_capacity  # atoms admitted at once, as in the host loop (cell rows not counted)
        # at least one padding row (where empty neighbour slots point); small batches padded by at most 12.5 %
        self.rows = min(round_up(row_capacity + 1, 64), bucket(row_capacity + 1))
        self.systems = system_capacity + 1  # the last system slot holds the padding rows
        self.lists = NeighborLists(self.cutoff, self.rows, self.systems, allocation, model_cutoff=cutoff_of(force_field))
        self.limits = {"fmax": float(fmax), "max_force": float(max_force), "skin": float(skin), "cutoff": self.cutoff,
                       "model_cutoff": cutoff_of(force_field),
                       "max_steps": int(max_steps), "max_inner": int(max_inner)}
        self.loop = compiled_loop(force_field, optimizer, evaluate, cell, place(rebuild, "rebuild") == "device")
        self.counters = {"loop_calls": 0, "iterations": 0, "rebuilds": 0, "reallocations": 0, "refills": 0, "structure_evaluations": 0,
                         "compilations": 0, "compile_seconds": 0.0, "device_seconds": 0.0, "host_seconds": 0.0}

    def pack(self, running: list[Running], blocks: list[dict], evaluations: int) -> packing.DeviceState:
        """The device state of these systems (:func:`jaxmat.relax.state.pack`) with their neighbour lists."""
        numbers = np.concatenate([r.atoms.numbers for r in running])
        state = packing.pack(blocks, [r.n_atoms for r in running], self.force_field.device_species(numbers), evaluations,
                             rows=self.rows, systems=self.systems, optimizer=self.optimizer, relax_cell=self.relax_cell)
        return state.replace(**self.lists.arrays(running, state.positions, state.cells, state.system_index))

    # --- the run -------------------------------------------------------------------------------------

    def run(self, structures, queue: list[int], sizes: dict, finish) -> dict:
        """Relax the queued structures (indices into structures; sizes: the rows each counts against the atom
        budget, as in the host loop); returns counters."""
        running, state, done = [], None, []
        self.lists.reserve([structures[i] for i in queue])
        while queue or running:
            host_started = time.perf_counter()
            if state is None or done:
                allocated, before = self.lists.slots > 0, self.lists.capacities
                running, state = self.repack(structures, queue, sizes, running, state, done)
                self.counters["reallocations"] += int(allocated and self.lists.capacities != before)  # a new compiled shape
                if not running:
                    break
                state = jax.device_put(state)
            self.counters["host_seconds"] += time.perf_counter() - host_started
            started = time.perf_counter()
            state, iterations, overflow, rebuilds, stale = self.loop(self.params, state, self.limits, bool(queue), self.counters)
            status, active = np.asarray(state.status), np.asarray(state.active)  # waits for the device
            self.counters["device_seconds"] += time.perf_counter() - started
            host_started = time.perf_counter()
            self.counters["loop_calls"] += 1
            crowded = int(overflow) == CROWDED
            self.counters["iterations"] += int(iterations) - crowded  # a crowded iteration's step was discarded
            self.counters["rebuilds"] += int(rebuilds) + int(bool(stale))  # in the loop, and for the host
            self.counters["structure_evaluations"] = int(state.evaluations)
            done = [k for k in range(len(running)) if not active[k] and status[k] != RUNNING]
            if done:
                state = jax.tree_util.tree_map(np.asarray, state)
                self.report(running, state, done, finish)
            elif bool(overflow) or bool(stale):  # lists built on the host: rebuilt, re-allocated larger if needed
                host = jax.tree_util.tree_map(np.asarray, state)
                before = self.lists.capacities
                host = host.replace(**self.lists.arrays(running, host.positions, host.cells, host.system_index, crowded=crowded))
                state = jax.device_put(host)
                self.counters["reallocations"] += int(self.lists.capacities != before)  # a new compiled shape
            self.counters["host_seconds"] += time.perf_counter() - host_started
        self.counters["device_seconds"] -= self.counters["compile_seconds"]
        return self.counters

    def repack(self, structures, queue, sizes, running, state, done):
        """Drop the finished systems, keep the others with their state, add queued systems that fit, and
        rebuild the neighbour lists at the current geometry (host arrays)."""
        finished = set(done)
        starts = np.concatenate([[0], np.cumsum([r.n_atoms for r in running])]).astype(int)
        keep = [k for k in range(len(running)) if k not in finished]
        blocks = [packing.block_of(state, k, slice(starts[k], starts[k + 1]), self.rows, self.relax_cell) for k in keep]
        survivors = [running[k] for k in keep]
        used = sum(sizes[r.index] for r in survivors)
        admitted = admit(queue, sizes, used, len(survivors), Capacities(self.atom_budget, self.systems - 1))
        new = [Running(index, structures[index], len(structures[index])) for index in admitted]
        if not survivors and not new:
            return [], None
        running = survivors + new
        self.counters["refills"] += 1
        evaluations = int(state.evaluations) if state is not None else 0
        return running, self.pack(running, blocks + [packing.fresh_block(self.optimizer, r.atoms, self.cell) for r in new], evaluations)

    def report(self, running, state, done, finish):
        starts = np.concatenate([[0], np.cumsum([r.n_atoms for r in running])])
        for k in done:
            r, rows = running[k], slice(starts[k], starts[k + 1])
            code = int(state.status[k])
            atoms = r.atoms.copy()
            if self.relax_cell:
                atoms.set_cell(state.cells[k], scale_atoms=False)
            atoms.positions = state.positions[rows]
            stress = np.array(state.stress[k]) if self.relax_cell else None
            finish(r.index, atoms, STATUS_NAMES[code], int(state.steps[k]), float(state.energy[k]),
                   np.array(state.forces[rows]), stress, message(code, state.fmax[k]))
