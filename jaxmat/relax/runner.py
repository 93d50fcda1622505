"""``relax()``: a queue of structures, a batch bounded by an atom budget, in-flight batching.

It checks the input (settings and unknown elements before any work; per structure, what
:func:`overlap_message` names marks it failed while the rest runs), sizes the batch and runs
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

from jaxmat.errors import ConfigError, JaxmatInputError
from jaxmat.forcefields.base import unsupported_elements
from jaxmat.forcefields.neighbors import close_pairs
from jaxmat.precision import scoped_by
from jaxmat.relax import constraints, host_loop
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.lists import place
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


MAX_COORDINATE = 1e6  # Å; beyond this neighbour searches fail (vesin stops the process on 1e11 Å)
MIN_CELL_VOLUME = 1e-3  # Å^3; a periodic cell at or below this is degenerate


def overlap_message(atoms, relax_cell: bool = False) -> str | None:
    """Why the structure cannot be relaxed, or None: no atoms, non-finite or absurd coordinates, a periodic
    cell that is non-finite or flat, partial periodicity, ASE constraints jaxmat does not apply
    (:func:`jaxmat.relax.constraints.refusal`), a non-periodic structure with ``relax_cell``, overlapping atoms."""
    if len(atoms) == 0:
        return "structure has no atoms"
    if not np.all(np.isfinite(atoms.positions)):
        return "non-finite coordinates"
    if np.abs(atoms.positions).max() > MAX_COORDINATE:
        return f"coordinates beyond {MAX_COORDINATE:.0e} Å (largest {np.abs(atoms.positions).max():.3g} Å)"
    pbc = np.asarray(atoms.pbc, bool)
    if pbc.any() and not pbc.all():
        return (f"partly periodic (pbc {pbc.tolist()}): jaxmat relaxes fully periodic or non-periodic structures; "
                "make a slab fully periodic with a vacuum layer")
    if pbc.all():
        cell = np.asarray(atoms.cell[:], float)
        if not np.all(np.isfinite(cell)):
            return "non-finite cell"
        if abs(np.linalg.det(cell)) <= MIN_CELL_VOLUME:
            return f"periodic cell with (near) zero volume ({abs(np.linalg.det(cell)):.3g} Å^3)"
    elif relax_cell:
        return "relax_cell needs a periodic structure (pbc all True), this one is not periodic"
    refused = constraints.refusal(atoms)
    if refused:
        return refused
    i, j, d = close_pairs(atoms.positions, atoms.cell[:], bool(pbc.all()), MIN_DISTANCE)
    if len(d):
        k = int(np.argmin(d))
        return f"atoms {i[k]} and {j[k]} overlap (distance {d[k]:.3f} Å)"
    return None


def check_settings(fmax: float, max_steps: int, max_atoms: int | None, max_systems: int | None) -> None:
    """Refuse settings that cannot describe a relaxation (before any work)."""
    if not (np.isfinite(fmax) and fmax > 0):
        raise ConfigError(f"fmax must be a positive number of eV/Å, not {fmax!r}")
    if int(max_steps) != max_steps or max_steps < 0:
        raise ConfigError(f"max_steps must be a whole number >= 0, not {max_steps!r}")
    for name, value in (("max_atoms", max_atoms), ("max_systems", max_systems)):
        if value is not None and (int(value) != value or value < 1):
            raise ConfigError(f"{name} must be a whole number >= 1 (or None), not {value!r}")


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
    cell_filter: str | CellFilter | None = None,
    loop: str = "auto",
    skin: float = 0.3,
    max_inner: int = 50,
    allocation: str = "auto",
    rebuild: str = "auto",
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
    fmax also bounds the filter's cell forces, as in ASE. cell_filter: "frechet" (default), "exp" (ASE's
    ExpCellFilter) or a :class:`jaxmat.relax.cell.CellFilter` with a pressure (GPa), hydrostatic_strain,
    constant_volume or a strain mask (needs relax_cell). ASE constraints on the structures (FixAtoms,
    FixCartesian, FixCom, FixSymmetry; :mod:`jaxmat.relax.constraints`) are applied as ASE applies them; others
    are refused.
    loop: "device" runs evaluation, checks, optimizer steps and neighbour-list updates in one compiled loop
    on the accelerator (:mod:`jaxmat.relax.device_loop`; JAX force fields: JAX MACE, pair potentials; no
    trajectories), "host" the host-driven loop (any force field), "auto" (default) the device loop where
    it applies. skin (Å): neighbour-list margin of the device loop, rebuilt when an atom moved skin / 2;
    max_inner: most iterations per device call (results and progress are reported between calls).
    allocation: where the device loop builds neighbour lists when systems join or capacities grow: "host"
    (vesin), "device" (on the accelerator, as its in-loop rebuilds) or "auto" (default: the device on
    GPUs/TPUs, the host on CPU); same pairs either way. rebuild: where it rebuilds a list that went stale, "device"
    (inside the compiled loop), "host" (the loop returns and vesin rebuilds it: faster on CPU, about 0.4 s vs 7 s
    for 32 x 512-atom cells, and a smaller program to compile) or "auto" (default: as allocation's auto); same steps.
    stats then also holds loop_calls, iterations, rebuilds (of stale lists), reallocations (on the host after a
    list overflow), refills, compilations, compile_seconds, device_seconds, host_seconds.
    """
    import time

    check_settings(fmax, max_steps, max_atoms, max_systems)
    cell = cell_options(cell_filter, relax_cell)
    if loop not in ("auto", "device", "host"):
        raise ValueError(f"loop must be auto, device or host, not {loop!r}")
    place(allocation, "allocation"), place(rebuild, "rebuild")  # refused early, whichever loop runs
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
        problem = overlap_message(atoms, relax_cell)
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
                                      cell=cell, allocation=allocation, rebuild=rebuild)
            counters.update(device.run(structures, queue, sizes, results.record))
            counters["force_calls"] = counters["iterations"]
            counters["force_seconds"] = counters["device_seconds"]
        else:
            host_loop.run(structures, queue, sizes, force_field, opt, fmax=fmax, max_steps=max_steps, max_force=MAX_FORCE,
                          row_capacity=capacity.rows, system_capacity=capacity.systems, cell=cell, counters=counters,
                          finish=results.record, trajectories=results.trajectories if keep_trajectory else None)
    bar.close()
    if stats is not None:
        stats.update(counters, total_seconds=time.perf_counter() - started)
    return results.items


def cell_options(cell_filter, relax_cell: bool) -> CellFilter | None:
    """The cell filter of a run (None: cells stay fixed); a filter without relax_cell is refused."""
    if cell_filter is None:
        return CellFilter() if relax_cell else None
    if not relax_cell:
        raise ConfigError(f"cell_filter={cell_filter!r} needs relax_cell=True")
    return CellFilter(cell_filter) if isinstance(cell_filter, str) else cell_filter


def _as_atoms(structure):
    """ase.Atoms from Atoms or a pymatgen Structure."""
    if hasattr(structure, "get_positions"):
        return structure
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)
