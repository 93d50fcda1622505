"""The relaxation loop on the device: force evaluation, convergence checks and optimizer steps of many
systems in one compiled ``lax.while_loop``, for force fields with a device model (JAX MACE, pair potentials).

One state pytree holds every running system at fixed capacities — rows (atoms), systems (the last
slot collects padding rows and is never read), neighbour slots — with per-atom and per-system
optimizer state, step counters, status codes and the last energies and forces. Each iteration does
what one iteration of the host loop (:mod:`jaxmat.relax.runner`) does, in the same order: evaluate,
retire systems that converged (max force < fmax), failed (non-finite or exploding forces) or hit
max_steps, then step the others with the same optimizer code (FIRE, L-BFGS), so the steps are the
host loop's and ASE's. The loop returns to the host after ``max_inner`` iterations, when no system is
left running, when a system finished while others wait in the queue (retire and refill), or when an
atom moved more than half the neighbour-list skin (the host rebuilds the list before any evaluation
with a stale one, so no neighbour is ever dropped). Capacities change only when a rebuilt list needs
more slots, so a run compiles once or a few times; ``stats`` counts compilations and their seconds,
the device loop's seconds (compilation excluded) and the host's.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.mace.ops import outgoing_slots
from jaxmat.forcefields.neighbors import bucket, moved_too_far, neighbor_matrix, pad_neighbor_matrix

RUNNING, CONVERGED, MAX_STEPS, NON_FINITE, EXPLODED = 0, 1, 2, 3, 4
STATUS_NAMES = {CONVERGED: "converged", MAX_STEPS: "max_steps", NON_FINITE: "failed", EXPLODED: "failed"}
GRAPH_KEYS = ("positions", "cells", "species", "system_index", "neighbors", "translations", "mask", "outgoing")
SLOT_MARGIN = 1.15  # neighbour-slot capacity over the most neighbours seen at allocation


def cutoff_of(force_field) -> float:
    """The force field's interaction cutoff (Å)."""
    return float(getattr(force_field, "r_max", None) or force_field.cutoff)


def make_loop(optimizer, evaluate):
    """A pure function (params, state, limits, exit_on_finish) -> (state, iterations, rebuild); limits holds
    fmax (eV/Å), max_force (eV/Å, beyond it a system has exploded), skin (Å), max_steps and max_inner."""

    def run(params, state, limits, exit_on_finish):
        fmax, max_force, skin, max_steps, max_inner = (limits[k] for k in ("fmax", "max_force", "skin", "max_steps", "max_inner"))
        n_systems = state["active"].shape[0]
        index, real = state["system_index"], state["row_mask"]

        def body(carry):
            state, iteration, _, _ = carry
            energy, forces, _ = evaluate(params, {k: state[k] for k in GRAPH_KEYS})
            bad_row = real & ~jnp.all(jnp.isfinite(forces), axis=-1)
            non_finite = (jax.ops.segment_sum(bad_row.astype(jnp.int32), index, n_systems) > 0) | ~jnp.isfinite(energy)
            norms = jnp.where(real & ~bad_row, jnp.linalg.norm(jnp.where(bad_row[:, None], 0.0, forces), axis=-1), 0.0)
            largest = jax.ops.segment_max(norms, index, n_systems)
            active = state["active"]
            failed = active & non_finite
            exploded = active & ~non_finite & (largest > max_force)
            converged = active & ~non_finite & ~exploded & (largest < fmax)
            out_of_steps = active & ~non_finite & ~exploded & ~converged & (state["steps"] >= max_steps)
            running = active & ~(failed | exploded | converged | out_of_steps)
            status = jnp.select([failed, exploded, converged, out_of_steps], [NON_FINITE, EXPLODED, CONVERGED, MAX_STEPS], state["status"])
            evaluated = active[index][:, None]
            atoms, systems, positions = optimizer.step(state["atom_state"], state["system_state"], state["positions"],
                                                       jnp.where(evaluated, forces, 0.0), index, running)
            new = dict(state, atom_state=atoms, system_state=systems, positions=positions, status=status, active=running,
                       steps=state["steps"] + running.astype(state["steps"].dtype),
                       energy=jnp.where(active, energy, state["energy"]), forces=jnp.where(evaluated, forces, state["forces"]),
                       fmax=jnp.where(active, largest, state["fmax"]),
                       evaluations=state["evaluations"] + jnp.sum(active[:-1]).astype(state["evaluations"].dtype))
            rebuild = moved_too_far(positions, state["reference"], real & running[index], skin)
            finished = jnp.any(active & ~running)
            stop = rebuild | ~jnp.any(running) | (exit_on_finish & finished)
            return new, iteration + 1, stop, rebuild

        def cond(carry):
            _, iteration, stop, _ = carry
            return (iteration < max_inner) & ~stop

        state, iterations, _, rebuild = jax.lax.while_loop(cond, body, (state, jnp.int32(0), jnp.bool_(False), jnp.bool_(False)))
        return state, iterations, rebuild

    return run


class CompiledLoop:
    """The loop of one force field and optimizer, compiled ahead of time once per shape of the state and
    kept with the force field (later runs of the same shapes compile nothing); with a persistent XLA cache
    (:mod:`jaxmat.compile_cache`) a new process reuses the compiled programs too."""

    def __init__(self, optimizer, evaluate):
        self.jitted = jax.jit(make_loop(optimizer, evaluate))
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


def compiled_loop(force_field, optimizer, evaluate) -> CompiledLoop:
    """The compiled loop of this force field and optimizer (one per pair, kept as long as the force field)."""
    loops = _LOOPS.setdefault(force_field, {})
    if optimizer not in loops:
        loops[optimizer] = CompiledLoop(optimizer, evaluate)
    return loops[optimizer]


@dataclass
class Running:
    """A system in the device batch: input index, its starting Atoms (cell, numbers), rows it occupies."""

    index: int
    atoms: object
    n_atoms: int


class DeviceRelaxation:
    """Host side of the device loop: packs systems at fixed capacities, rebuilds neighbour lists, retires
    and refills. ``finish(index, atoms, status, n_steps, energy, forces, message)`` receives each result."""

    def __init__(self, force_field, optimizer, fmax, max_steps, row_capacity, system_capacity, skin, max_inner, max_force):
        self.force_field, self.optimizer = force_field, optimizer
        self.params, evaluate = force_field.device_model()
        self.cutoff = cutoff_of(force_field) + skin
        self.atom_budget = row_capacity  # atoms admitted at once, as in the host loop
        self.rows = int(-(-(row_capacity + 1) // 64) * 64)  # at least one padding row for empty neighbour slots
        self.systems = system_capacity + 1  # the last system slot holds the padding rows
        self.slots = self.outgoing_width = 0
        self.limits = {"fmax": float(fmax), "max_force": float(max_force), "skin": float(skin), "max_steps": int(max_steps),
                       "max_inner": int(max_inner)}
        self.loop = compiled_loop(force_field, optimizer, evaluate)
        self.counters = {"loop_calls": 0, "iterations": 0, "rebuilds": 0, "refills": 0, "structure_evaluations": 0,
                         "compilations": 0, "compile_seconds": 0.0, "device_seconds": 0.0, "host_seconds": 0.0}

    # --- packing -------------------------------------------------------------------------------------

    def pack(self, running: list[Running], positions: np.ndarray, atom_state: dict, system_state: dict, extra: dict) -> dict:
        """The device state for these systems (rows in order), their positions, optimizer state and
        per-system records (steps, status, energy, fmax, forces) given as unpadded arrays."""
        n_rows = len(positions)
        if n_rows >= self.rows or len(running) >= self.systems:
            raise ValueError(f"{len(running)} systems / {n_rows} atoms exceed the device batch ({self.systems - 1} / {self.rows - 1})")
        pad_rows, pad_systems = self.rows - n_rows, self.systems - len(running)
        system_index = np.concatenate([np.repeat(np.arange(len(running)), [r.n_atoms for r in running]),
                                       np.full(pad_rows, self.systems - 1)]).astype(np.int32)
        numbers = np.concatenate([r.atoms.numbers for r in running]) if running else np.zeros(0, int)
        state = {
            "positions": _pad(positions, pad_rows), "reference": _pad(positions, pad_rows),
            "cells": np.concatenate([np.stack([r.atoms.cell[:] for r in running]).reshape(-1, 3, 3),
                                     np.tile(np.eye(3), (pad_systems, 1, 1))]),
            "species": _pad(self.force_field.device_species(numbers).astype(np.int32), pad_rows),
            "system_index": system_index, "row_mask": np.arange(self.rows) < n_rows,
            "atom_state": {k: _pad(np.asarray(v), pad_rows) for k, v in atom_state.items()},
            "system_state": {k: _pad(np.asarray(v), pad_systems) for k, v in system_state.items()},
            "active": np.arange(self.systems) < len(running), "steps": _pad(extra["steps"].astype(np.int32), pad_systems),
            "status": _pad(extra["status"].astype(np.int32), pad_systems), "energy": _pad(extra["energy"], pad_systems),
            "fmax": _pad(extra["fmax"], pad_systems), "forces": _pad(extra["forces"], pad_rows),
            "evaluations": np.asarray(extra.get("evaluations", 0), np.int64),
        }
        state.update(self.neighbor_arrays(running, state["positions"], state["cells"], state["system_index"]))
        return state

    def neighbor_arrays(self, running: list[Running], positions, cells, system_index) -> dict:
        """Neighbour matrix (within cutoff + skin) of the running systems at these positions; grows the
        slot capacities when needed (a new compiled shape)."""
        from jaxmat.forcefields.base import SystemBatch

        n_atoms = sum(r.n_atoms for r in running)
        batch = SystemBatch(np.asarray(positions)[:n_atoms], np.zeros(n_atoms, int), np.asarray(cells)[: len(running)],
                            np.stack([r.atoms.pbc for r in running]).reshape(-1, 3), np.asarray(system_index)[:n_atoms])
        matrix = neighbor_matrix(batch, self.cutoff, n_atoms + 1)
        if matrix.slots_needed > self.slots:
            self.slots = bucket(int(np.ceil(matrix.slots_needed * SLOT_MARGIN)), 4)
        matrix = pad_neighbor_matrix(matrix, n_atoms, self.rows, self.slots)
        incoming = np.bincount(matrix.neighbors[matrix.mask], minlength=self.rows).max(initial=0)
        if incoming > self.outgoing_width:
            self.outgoing_width = bucket(max(int(np.ceil(incoming * SLOT_MARGIN)), self.slots), 4)
        return {"neighbors": matrix.neighbors, "translations": matrix.translations, "mask": matrix.mask,
                "outgoing": outgoing_slots(matrix.neighbors, matrix.mask, self.outgoing_width)}

    # --- the run -------------------------------------------------------------------------------------

    def run(self, structures, queue: list[int], sizes: dict, finish, progress=None) -> dict:
        """Relax the queued structures (indices into structures; sizes: atoms of each); returns counters."""
        running, state, done = [], None, []
        while queue or running:
            host_started = time.perf_counter()
            if state is None or done:
                running, state = self.repack(structures, queue, sizes, running, state, done)
                if not running:
                    break
                state = jax.device_put(state)
            self.counters["host_seconds"] += time.perf_counter() - host_started
            started = time.perf_counter()
            state, iterations, rebuild = self.loop(self.params, state, self.limits, bool(queue), self.counters)
            status, active = np.asarray(state["status"]), np.asarray(state["active"])  # waits for the device
            self.counters["device_seconds"] += time.perf_counter() - started
            host_started = time.perf_counter()
            self.counters["loop_calls"] += 1
            self.counters["iterations"] += int(iterations)
            self.counters["structure_evaluations"] = int(state["evaluations"])
            done = [k for k in range(len(running)) if not active[k] and status[k] != RUNNING]
            if done:
                state = jax.tree_util.tree_map(np.asarray, state)
                self.report(running, state, done, finish)
                if progress:
                    progress(len(done))
            elif bool(rebuild):
                host = jax.tree_util.tree_map(np.asarray, state)
                host.update(self.neighbor_arrays(running, host["positions"], host["cells"], host["system_index"]))
                host["reference"] = host["positions"].copy()
                state = jax.device_put(host)
                self.counters["rebuilds"] += 1
            self.counters["host_seconds"] += time.perf_counter() - host_started
        self.counters["device_seconds"] -= self.counters["compile_seconds"]
        return self.counters

    def repack(self, structures, queue, sizes, running, state, done):
        """Drop the finished systems, keep the others with their state, add queued systems that fit, and
        rebuild the neighbour lists at the current positions (host arrays)."""
        finished = set(done)
        keep = [k for k in range(len(running)) if k not in finished]
        starts = np.concatenate([[0], np.cumsum([r.n_atoms for r in running])]).astype(int)
        keep_rows = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in keep] + [np.zeros(0, int)])
        survivors = [running[k] for k in keep]
        used = len(keep_rows)
        new = []
        while queue and len(survivors) + len(new) < self.systems - 1 and used + sizes[queue[0]] <= self.atom_budget:
            index = queue.pop(0)
            new.append(Running(index, structures[index], sizes[index]))
            used += sizes[index]
        if not survivors and not new:
            return [], None
        if state is None:
            atom_state = {k: v[:0] for k, v in self.optimizer.init_atoms(0).items()}
            system_state = {k: v[:0] for k, v in self.optimizer.init_systems(0).items()}
            positions, extra, evaluations = np.zeros((0, 3)), _empty_records(0, 0), 0
        else:
            atom_state = {k: np.asarray(v)[keep_rows] for k, v in state["atom_state"].items()}
            system_state = {k: np.asarray(v)[keep] for k, v in state["system_state"].items()}
            positions = np.asarray(state["positions"])[keep_rows]
            extra = {k: np.asarray(state[k])[keep] for k in ("steps", "status", "energy", "fmax")}
            extra["forces"], evaluations = np.asarray(state["forces"])[keep_rows], int(state["evaluations"])
        n_new = sum(r.n_atoms for r in new)
        fresh_atoms, fresh_systems, blank = self.optimizer.init_atoms(n_new), self.optimizer.init_systems(len(new)), _empty_records(len(new), n_new)
        atom_state = {k: np.concatenate([atom_state[k], fresh_atoms[k]]) for k in fresh_atoms}
        system_state = {k: np.concatenate([system_state[k], fresh_systems[k]]) for k in fresh_systems}
        extra = {k: np.concatenate([extra[k], blank[k]]) for k in blank} | {"evaluations": evaluations}
        positions = np.concatenate([positions] + [r.atoms.positions for r in new])
        running = survivors + new
        self.counters["refills"] += 1
        return running, self.pack(running, positions, atom_state, system_state, extra)

    def report(self, running, state, done, finish):
        starts = np.concatenate([[0], np.cumsum([r.n_atoms for r in running])])
        for k in done:
            r, rows = running[k], slice(starts[k], starts[k + 1])
            code = int(state["status"][k])
            message = {NON_FINITE: "non-finite energy, forces or stress",
                       EXPLODED: f"exploding forces (max {float(state['fmax'][k]):.3g} eV/Å)"}.get(code, "")
            atoms = r.atoms.copy()
            atoms.positions = state["positions"][rows]
            finish(r.index, atoms, STATUS_NAMES[code], int(state["steps"][k]), float(state["energy"][k]),
                   np.array(state["forces"][rows]), message)


def _pad(array: np.ndarray, extra: int, value=0) -> np.ndarray:
    array = np.asarray(array)
    return np.concatenate([array, np.full((extra,) + array.shape[1:], value, array.dtype)])


def _empty_records(n_systems: int, n_rows: int) -> dict:
    return {"steps": np.zeros(n_systems, np.int32), "status": np.full(n_systems, RUNNING, np.int32),
            "energy": np.full(n_systems, np.nan), "fmax": np.zeros(n_systems), "forces": np.zeros((n_rows, 3))}

