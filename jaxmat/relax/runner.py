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
from jaxmat.forcefields.base import SystemBatch, unsupported_elements
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
    __slots__ = ("index", "n_atoms", "steps")

    def __init__(self, index, n_atoms):
        self.index, self.n_atoms, self.steps = index, n_atoms, 0


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
) -> list[RelaxResult]:
    """Relax ASE Atoms with per-system convergence; results in input order.

    max_atoms: atom budget of one batch (default: all atoms, at most 4096). max_systems: most systems
    at once. on_result: called as each structure finishes (e.g. to append it to an output file).
    stats: if given, filled with force_calls (batch evaluations), structure_evaluations, force_seconds
    and total_seconds. float64 (default): optimizer arithmetic in double precision (enables JAX x64).
    """
    import time

    from ase.calculators.singlepoint import SinglePointCalculator

    started = time.perf_counter()
    counters = {"force_calls": 0, "structure_evaluations": 0, "force_seconds": 0.0}

    if float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    opt = make_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    structures = list(structures)
    check_elements(structures, force_field, names)
    results: list[RelaxResult | None] = [None] * len(structures)
    queue = []
    for i, atoms in enumerate(structures):
        problem = overlap_message(atoms)
        if problem:
            results[i] = RelaxResult(i, atoms.copy(), "failed", 0, message=problem)
        else:
            queue.append(i)
    sizes = {i: len(structures[i]) for i in queue}
    if queue:
        largest = max(sizes.values())
        budget = max(largest, max_atoms or min(sum(sizes.values()), max(4096, largest)))
        atom_capacity = int(-(-budget // 64) * 64)
        system_capacity = max_systems or min(len(queue), max(1, atom_capacity // max(1, min(sizes.values()))))
    bar = tqdm(total=len(structures), desc=f"relax ({opt.name})", unit="structure", disable=not progress, file=sys.stderr)
    for r in results:
        if r is not None:
            bar.update()
            if on_result:
                on_result(r)

    def finish(slot, positions, out_energy, out_forces, out_stress, status, message=""):
        atoms = structures[slot.index].copy()
        atoms.positions = positions
        atoms.calc = SinglePointCalculator(atoms, energy=out_energy, forces=out_forces, **({"stress": out_stress} if out_stress is not None else {}))
        result = RelaxResult(slot.index, atoms, status, slot.steps, out_energy, out_forces, out_stress, message)
        if keep_trajectory:
            result.trajectory = trajectories.pop(slot.index, [])
        results[slot.index] = result
        bar.update()
        if on_result:
            on_result(result)

    step_fn = jax.jit(opt.step)
    trajectories: dict[int, list] = {}
    slots: list[_Slot] = []
    positions = np.zeros((0, 3))
    atom_state = opt.init_atoms(0)
    system_state = opt.init_systems(0)
    while queue or slots:
        # refill: keep running systems (with their optimizer state), add new ones that fit
        if queue and len(slots) < system_capacity:
            used = sum(s.n_atoms for s in slots)
            new = []
            while queue and len(slots) + len(new) < system_capacity and used + sizes[queue[0]] <= atom_capacity:
                index = queue.pop(0)
                new.append(_Slot(index, sizes[index]))
                used += sizes[index]
            if new:
                fresh_atoms = opt.init_atoms(sum(s.n_atoms for s in new))
                atom_state = {k: np.concatenate([np.asarray(v)[: len(positions)], fresh_atoms[k]]) for k, v in atom_state.items()}
                system_state = {k: np.concatenate([np.asarray(v)[: len(slots)], opt.init_systems(len(new))[k]]) for k, v in system_state.items()}
                positions = np.concatenate([positions[: sum(s.n_atoms for s in slots)]] + [structures[s.index].positions for s in new])
                slots += new
        n_real = sum(s.n_atoms for s in slots)
        system_index = np.repeat(np.arange(len(slots)), [s.n_atoms for s in slots])
        batch = SystemBatch(
            positions[:n_real], np.concatenate([structures[s.index].numbers for s in slots]),
            np.stack([structures[s.index].cell[:] for s in slots]), np.stack([structures[s.index].pbc for s in slots]), system_index,
        )
        counters["force_calls"] += 1
        counters["structure_evaluations"] += len(slots)
        force_started = time.perf_counter()
        try:
            out = force_field(batch)
            energies, forces = np.asarray(out.energy, np.float64), np.asarray(out.forces, np.float64)
        except Exception as exc:  # a whole-batch failure: isolate by evaluating one system at a time
            energies, forces = _evaluate_one_by_one(force_field, batch, exc)
        counters["force_seconds"] += time.perf_counter() - force_started
        # retire finished systems
        starts = np.concatenate([[0], np.cumsum([s.n_atoms for s in slots])])
        keep = []
        for k, slot in enumerate(slots):
            f_k = forces[starts[k] : starts[k + 1]]
            e_k = energies[k]
            pos_k = positions[starts[k] : starts[k + 1]]
            if keep_trajectory:
                trajectories.setdefault(slot.index, []).append((pos_k.copy(), float(e_k), f_k.copy()))
            if not (np.isfinite(e_k) and np.all(np.isfinite(f_k))):
                finish(slot, pos_k, float(e_k), f_k, None, "failed", "non-finite energy or forces")
                continue
            f_max = float(np.max(np.linalg.norm(f_k, axis=1)))
            if f_max > MAX_FORCE:
                finish(slot, pos_k, float(e_k), f_k, None, "failed", f"exploding forces (max {f_max:.3g} eV/Å)")
            elif f_max < fmax:
                finish(slot, pos_k, float(e_k), f_k, None, "converged")
            elif slot.steps >= max_steps:
                finish(slot, pos_k, float(e_k), f_k, None, "max_steps")
            else:
                keep.append(k)
        if len(keep) < len(slots):
            atom_keep = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in keep]) if keep else np.zeros(0, int)
            atom_state = {k: np.asarray(v)[atom_keep] for k, v in atom_state.items()}
            system_state = {k: np.asarray(v)[np.asarray(keep, int)] for k, v in system_state.items()}
            positions, forces = positions[atom_keep], forces[atom_keep]
            slots = [slots[k] for k in keep]
        if not slots:
            continue
        # one optimizer step for the running systems, at fixed padded shapes
        n_real = len(positions)
        pad_atoms, pad_systems = atom_capacity - n_real, system_capacity + 1 - len(slots)
        system_index = np.concatenate([np.repeat(np.arange(len(slots)), [s.n_atoms for s in slots]), np.full(pad_atoms, system_capacity)])
        active = np.zeros(system_capacity + 1, bool)
        active[: len(slots)] = True
        padded_atoms = {k: _pad_rows(np.asarray(v), atom_capacity) for k, v in atom_state.items()}
        padded_systems = {k: _pad_rows(np.asarray(v), system_capacity + 1) for k, v in system_state.items()}
        new_atoms, new_systems, new_positions = step_fn(
            padded_atoms, padded_systems, _pad_rows(positions, atom_capacity), _pad_rows(forces, atom_capacity), system_index, active,
        )
        atom_state = {k: np.asarray(v)[:n_real] for k, v in new_atoms.items()}
        system_state = {k: np.asarray(v)[: len(slots)] for k, v in new_systems.items()}
        positions = np.asarray(new_positions)[:n_real]
        for slot in slots:
            slot.steps += 1
    bar.close()
    if stats is not None:
        stats.update(counters, total_seconds=time.perf_counter() - started)
    return results


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((rows - len(array),) + array.shape[1:], array.dtype)])


def _evaluate_one_by_one(force_field, batch: SystemBatch, error: Exception):
    """Per-system evaluation after a batch call failed: failing systems get NaN and are marked failed."""
    log.warning("batch force evaluation failed (%s); evaluating systems one by one", error)
    energies = np.full(batch.n_systems, np.nan)
    forces = np.full_like(batch.positions, np.nan)
    for s in range(batch.n_systems):
        mask = batch.system_index == s
        single = SystemBatch(batch.positions[mask], batch.numbers[mask], batch.cells[s : s + 1], batch.pbc[s : s + 1], np.zeros(mask.sum(), int))
        try:
            out = force_field(single)
            energies[s], forces[mask] = out.energy[0], out.forces
        except Exception as exc:
            log.warning("system %d failed: %s", s, exc)
    return energies, forces
