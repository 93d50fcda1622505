"""``relax()``: a queue of structures, a batch bounded by an atom budget, in-flight batching.

It checks the input (unknown elements before any work, overlapping atoms), sizes the batch and runs
either the compiled device loop (:mod:`jaxmat.relax.device_loop`, JAX force fields) or the host loop
(:mod:`jaxmat.relax.host_loop`, any force field); both hand each finished system to one ``record``
that builds its :class:`RelaxResult`.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from jaxmat.errors import JaxmatInputError
from jaxmat.forcefields.base import unsupported_elements
from jaxmat.forcefields.neighbors import close_pairs
from jaxmat.precision import scoped_by
from jaxmat.relax import host_loop
from jaxmat.relax.optimizers import FIRE, LBFGS, make_optimizer
from jaxmat.relax.results import RelaxResult, Results
from jaxmat.relax.scheduler import capacities, row_sizes

MAX_FORCE = 1e4  # eV/Å; beyond this the structure is treated as exploded
MIN_DISTANCE = 0.5  # Å; closer atoms are overlapping


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
    if len(atoms) == 0:
        return "structure has no atoms"
    if not np.all(np.isfinite(atoms.positions)):
        return "non-finite coordinates"
    i, j, d = close_pairs(atoms.positions, atoms.cell[:], bool(atoms.pbc.all()), MIN_DISTANCE)
    if len(d):
        k = int(np.argmin(d))
        return f"atoms {i[k]} and {j[k]} overlap (distance {d[k]:.3f} Å)"
    return None


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

    optimizer: a name in jaxmat.relax.optimizers.OPTIMIZERS ("fire", "lbfgs", "lbfgs-linesearch": ASE's
    LBFGSLineSearch, whose n_steps count line searches as ASE's do) or an optimizer instance.

    max_atoms: atom budget of one batch (default: all atoms, at most 4096). max_systems: most systems
    at once. on_result: called as each structure finishes (e.g. to append it to an output file).
    stats: if given, filled with force_calls (batch evaluations), structure_evaluations, force_seconds
    and total_seconds. float64 (default): optimizer arithmetic in double precision (the call runs in
    jaxmat.precision.float64_scope; the process-wide JAX setting is left alone).
    relax_cell: relax the cell too, through ASE's FrechetCellFilter per system (needs stress); then
    fmax also bounds the filter's cell forces, as in ASE.
    loop: "device" runs evaluation, checks, optimizer steps and neighbour-list updates in one compiled loop
    on the accelerator (:mod:`jaxmat.relax.device_loop`; JAX force fields: JAX MACE, pair potentials; no
    trajectories), "host" the host-driven loop (any force field), "auto" (default) the device loop where
    it applies. skin (Å): neighbour-list margin of the device loop, rebuilt when an atom moved skin / 2;
    max_inner: most iterations per device call (results and progress are reported between calls).
    stats then also holds loop_calls, iterations, rebuilds (on the device), reallocations (on the host after a
    list overflow), refills, compilations, compile_seconds, device_seconds, host_seconds.
    """
    import time

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
    bar = tqdm(total=len(structures), desc=f"relax ({opt.name})", unit="structure", disable=not progress, file=sys.stderr)
    results = Results(len(structures), bar, on_result, keep_trajectory)
    queue = []
    for i, atoms in enumerate(structures):
        problem = overlap_message(atoms)
        if problem:
            results.add(RelaxResult(i, atoms.copy(), "failed", 0, message=problem))
        else:
            queue.append(i)
    if queue:
        sizes = row_sizes(structures, queue, relax_cell)
        capacity = capacities(sizes, max_atoms, max_systems, jax.device_count())
        if device_capable and loop != "host":
            from jaxmat.relax.device_loop import DeviceRelaxation

            device = DeviceRelaxation(force_field, opt, fmax, max_steps, capacity.rows, capacity.systems, skin, max_inner, MAX_FORCE,
                                      relax_cell=relax_cell)
            counters.update(device.run(structures, queue, sizes, results.record))
            counters["force_calls"] = counters["iterations"]
            counters["force_seconds"] = counters["device_seconds"]
        else:
            host_loop.run(structures, queue, sizes, force_field, opt, fmax=fmax, max_steps=max_steps, max_force=MAX_FORCE,
                          row_capacity=capacity.rows, system_capacity=capacity.systems, relax_cell=relax_cell, counters=counters,
                          finish=results.record, trajectories=results.trajectories if keep_trajectory else None)
    bar.close()
    if stats is not None:
        stats.update(counters, total_seconds=time.perf_counter() - started)
    return results.items


def _as_atoms(structure):
    """ase.Atoms from Atoms or a pymatgen Structure."""
    if hasattr(structure, "get_positions"):
        return structure
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)
