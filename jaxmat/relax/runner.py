"""``relax()``: a queue of structures, a batch bounded by an atom budget, in-flight batching.

It checks the input (settings, structure types and unknown elements before any work; per structure, what
:func:`jaxmat.relax.inputs.problem` names marks it failed while the rest runs), sizes the batch and runs
either the compiled device loop (:mod:`jaxmat.relax.device_loop`, JAX force fields) or the host loop
(:mod:`jaxmat.relax.host_loop`, any force field); both hand each finished system to one ``record``
that builds its :class:`RelaxResult`.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Sequence

from tqdm import tqdm

from jaxmat.errors import ConfigError
from jaxmat.precision import scoped_by
from jaxmat.relax import host_loop
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.inputs import check_elements, name_of, problem, structure_list
from jaxmat.relax.optimizers import FIRE, LBFGS
from jaxmat.relax.options import DeviceLoopOptions, cell_options, check_settings, make_optimizer
from jaxmat.relax.results import RelaxResult, RelaxResults, Results
from jaxmat.relax.scheduler import capacities, row_sizes

MAX_FORCE = 1e4  # eV/Å; beyond this the structure is treated as exploded


@scoped_by("float64")
def relax(
    structures: Sequence,
    force_field,
    *,
    optimizer: str | FIRE | LBFGS = "fire",
    optimizer_options: dict | None = None,
    fmax: float = 0.05,
    max_steps: int = 300,
    relax_cell: bool = False,
    cell_filter: str | CellFilter | None = None,
    max_atoms: int | None = None,
    max_systems: int | None = None,
    loop: str = "auto",
    device_loop: DeviceLoopOptions = DeviceLoopOptions(),
    float64: bool = True,
    keep_trajectory: bool = False,
    names: Sequence[str] | None = None,
    progress: bool = True,
    on_result: Callable[[RelaxResult], None] | None = None,
) -> RelaxResults:
    """Relax ASE Atoms (or pymatgen Structures) with per-system convergence; results in input order, with the run's
    statistics as ``results.stats`` (:class:`jaxmat.relax.results.RelaxResults`).

    optimizer: a name in jaxmat.relax.optimizers.OPTIMIZERS ("fire", "lbfgs", "lbfgs-linesearch": ASE's
    LBFGSLineSearch, whose n_steps count line searches as ASE's do) with ``optimizer_options`` (its fields, e.g.
    ``{"dt_max": 0.5}``), or an optimizer instance. fmax (eV/Å): converged when every force (and cell force) is
    below it; max_steps: optimizer steps at most (0: the start is judged, nothing moves; for energies alone use
    :func:`jaxmat.relax.evaluate`).

    relax_cell: relax the cell too (needs periodic structures and stress); fmax then also bounds the cell
    forces, as in ASE. cell_filter: "frechet" (default, ASE's FrechetCellFilter), "exp" (ASE's ExpCellFilter) or a
    :class:`jaxmat.relax.cell.CellFilter` with a pressure (GPa), hydrostatic_strain, constant_volume or a strain mask.
    ASE constraints on the structures (FixAtoms, FixCartesian, FixCom, FixSymmetry; :mod:`jaxmat.relax.constraints`)
    are applied as ASE applies them; others are refused for that structure. Pass Atoms, not ASE filters.

    structures: a list of them (one Atoms is a list of one). max_atoms: the row budget of one batch, kept exactly (atoms,
    plus 3 cell rows per structure with relax_cell; default: all, at most max(4096, the largest structure); a larger
    structure runs alone). max_systems: most systems at once.
    loop: "device" runs evaluation, checks, optimizer steps and neighbour-list updates in one compiled loop on the
    accelerator (:mod:`jaxmat.relax.device_loop`; JAX force fields; no trajectories), "host" the host-driven loop
    (any force field), "auto" (default) the device loop where it applies; device_loop: that loop's
    :class:`jaxmat.relax.options.DeviceLoopOptions` (skin, max_inner, allocation, rebuild). float64 (default):
    optimizer arithmetic in double precision (in jaxmat.precision.float64_scope; the process-wide setting is left
    alone). keep_trajectory: each result keeps (positions, energy, forces, cell) per evaluation (host loop).
    names: how errors and messages name the structures. on_result: called as each structure finishes.

    A force field that runs out of memory gets half the batch (host loop); one that raises a numerical error fails
    that structure; anything else stops the run with :class:`jaxmat.errors.ForceFieldError` naming the structures.
    """
    check_settings(fmax, max_steps, max_atoms, max_systems, loop)
    if not isinstance(device_loop, DeviceLoopOptions):
        raise ConfigError(f"device_loop must be a jaxmat.relax.DeviceLoopOptions, not {type(device_loop).__name__}")
    cell = cell_options(cell_filter, relax_cell)
    opt = make_optimizer(optimizer, optimizer_options)
    device_capable = getattr(force_field, "supports_device_loop", False) and not keep_trajectory
    if loop == "device" and not device_capable:
        raise ConfigError("the device loop needs a JAX force field (JAX MACE or a pair potential) and no trajectory")
    started = time.perf_counter()
    structures, names = structure_list(structures, names)
    check_elements(structures, force_field, names)
    counters = {"force_calls": 0, "structure_evaluations": 0, "force_seconds": 0.0}
    bar = tqdm(total=len(structures), desc=f"relax ({opt.name})", unit="structure", disable=not progress, file=sys.stderr)
    results = Results(len(structures), bar, on_result, keep_trajectory)
    queue = []
    for i, atoms in enumerate(structures):
        why = problem(atoms, relax_cell)
        if why:
            results.add(RelaxResult(i, atoms.copy(), "failed", 0, message=why))
        else:
            queue.append(i)
    try:
        if queue:
            sizes = row_sizes(structures, queue, relax_cell)
            capacity = capacities(sizes, max_atoms, max_systems)
            if device_capable and loop != "host":
                from jaxmat.relax.device_loop import DeviceRelaxation

                knobs = device_loop
                device = DeviceRelaxation(force_field, opt, fmax, max_steps, capacity.rows, capacity.systems, knobs.skin,
                                          knobs.max_inner, MAX_FORCE, cell=cell, allocation=knobs.allocation, rebuild=knobs.rebuild)
                counters.update(device.run(structures, queue, sizes, results.record))
                counters["force_calls"] = counters["iterations"]
                counters["force_seconds"] = counters["device_seconds"]
            else:
                describe = lambda indices: ", ".join(name_of(names, i) for i in indices)
                host_loop.run(structures, queue, sizes, force_field, opt, fmax=fmax, max_steps=max_steps, max_force=MAX_FORCE,
                              row_capacity=capacity.rows, system_capacity=capacity.systems, cell=cell, counters=counters,
                              finish=results.record, describe=describe,
                              trajectories=results.trajectories if keep_trajectory else None)
    finally:
        bar.close()
    return RelaxResults(results.items, dict(counters, total_seconds=time.perf_counter() - started))
