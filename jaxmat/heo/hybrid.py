"""Hybrid swap Monte Carlo / Langevin MD: after every swap sweep (:mod:`jaxmat.heo.swap`), ``md_steps`` Langevin NVT
steps (:mod:`jaxmat.heo.langevin`) of every replica at its own temperature, all replicas one batch on the device.

Each atom keeps its site's velocity when two cations swap (the thermostat re-equilibrates the kinetic energy; masses
follow the species). Between sweeps the MD loop owns the geometry: its skin list is rebuilt whenever it may be stale,
and after the MD segment the swap sampler's list (the model's cutoff, no skin) is rebuilt at the new positions and the
energies re-evaluated there. The lowest energy met is kept with its arrangement and geometry. Optionally at constant
pressure (``pressure_gpa``: ASE's NPTBerendsen isotropic cell scaling before every MD step, :func:`jaxmat.heo.langevin.run`).

The whole state - the sampler's (:func:`jaxmat.heo.swap.init`), positions, cells, velocities, the lowest-energy geometry and
the MD PRNG keys - is one dict of arrays, checkpointed as :func:`jaxmat.heo.anneal.anneal` does (``python -m
jaxmat.heo.anneal --md-steps K``): every round starts from that dict alone (lists rebuilt from its positions), so a
killed run resumes with the uninterrupted run's numbers.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.data import atomic_masses

from jaxmat.heo import langevin, sampling, swap

log = logging.getLogger(__name__)
_energies = jax.jit(swap.energies, static_argnums=0)
_start = jax.jit(langevin.init_state, static_argnums=0, static_argnames=("cutoff",))


def _graph(lay, positions, cells, pbc, cutoff):
    """The swap sampler's graph (device arrays) at these positions (rows,) and cells (R, 3, 3)."""
    host, index = lay["graph"], lay["graph"]["system_index"]
    rows = len(index)
    lists = swap.model_lists(positions, cells, pbc[:-1], index[:-1], rows, cutoff)
    cells = np.concatenate([cells, np.eye(3)[None]])
    return {k: jnp.asarray(v) for k, v in dict(host, positions=positions, cells=cells, **lists).items()}


def _round(evaluate, params, lay, graph, state, md_steps, observe, pbc, cutoff, md):
    """One swap sweep then md_steps Langevin steps. Returns (state, graph at the new positions, trace record)."""
    index, rows = lay["graph"]["system_index"], len(lay["labels"])
    real = np.arange(rows) < rows - 1
    sampler = {k: state[k] for k in sampling.STATE_KEYS}
    best_before = np.asarray(sampler["best_energy"])
    arrays = (jnp.asarray(lay["sites"]), jnp.asarray(lay["n_sites"]), jnp.asarray(lay["kT"]))
    sampler, trace = swap.sweeps(evaluate, params, graph, *arrays, sampler, n_sweeps=1, attempts=lay["sites"].shape[1], observe=observe)
    positions, best_positions = np.asarray(state["positions"], float), np.array(state["best_positions"], float)
    cells, best_cells = np.asarray(state["cells"], float), np.array(state["best_cells"], float)
    better = np.asarray(sampler["best_energy"]) < best_before
    improved = np.repeat(np.append(better, False), np.bincount(index))
    best_positions[improved], best_cells[better] = positions[improved], cells[better]
    labels = np.asarray(sampler["labels"])
    masses = np.where(real, atomic_masses[lay["elements"][labels]], 1.0)
    md_graph = langevin.md_graph(positions, np.concatenate([cells, np.eye(3)[None]]), pbc, index, lay["graph"]["species_table"][labels],
                                 real, cutoff, md["skin"])
    md_state = _start(evaluate, params, {k: jnp.asarray(v) for k, v in md_graph.items()}, jnp.asarray(state["velocities"]),
                      jnp.asarray(state["md_keys"]), cutoff=cutoff)
    md_state, _ = langevin.run(evaluate, params, md_graph, md_state, md_steps, dt=md["dt"], kT=md["kT"], friction=md["friction"],
                               masses=masses, pbc=pbc, cutoff=cutoff, skin=md["skin"], **md["barostat"])
    positions = np.asarray(md_state["positions"], float)
    if md["barostat"]:  # fixed cells stay the host's exactly (not rounded through the device's precision)
        cells = np.asarray(md_state["cells"], float)[:-1]
    graph = _graph(lay, positions, cells, pbc, cutoff)
    energy = _energies(evaluate, params, graph, sampler["labels"])[:-1]
    lower = energy < sampler["best_energy"]
    moved = np.repeat(np.append(np.asarray(lower), False), np.bincount(index))
    best_positions[moved], best_cells[np.asarray(lower)] = positions[moved], cells[np.asarray(lower)]
    sampler = dict(sampler, energy=energy, best_energy=jnp.where(lower, energy, sampler["best_energy"]),
                   best_labels=jnp.where(jnp.asarray(moved), sampler["labels"], sampler["best_labels"]))
    state = dict(sampler, positions=positions, velocities=np.asarray(md_state["velocities"], float), md_keys=np.asarray(md_state["keys"]),
                 best_positions=best_positions, cells=cells, best_cells=best_cells)
    record = {"energy": np.asarray(energy)[None], "acceptance": np.asarray(trace["acceptance"]), "observed": np.asarray(trace["observed"])}
    return state, graph, record


def hybrid(structures, force_field, temperatures, sweeps: int, md_steps: int, *, seed: int = 0, timestep_fs: float = 2.0,
           friction_per_fs: float = 0.01, skin: float = 1.0, pressure_gpa: float | None = None, taup_fs: float = 500.0,
           compressibility_per_gpa: float = 0.005, checkpoint=None, checkpoint_every: int = 10, model_id: str = "",
           on_checkpoint=None) -> sampling.AnnealResult:
    """``sweeps`` rounds of one swap sweep then ``md_steps`` Langevin steps (timestep fs, friction 1/fs, skin Å) of every
    structure at every temperature (K); velocities start at zero. The result's trace energies are those after each
    round's MD, alpha the first-shell Warren-Cowley alpha after each sweep; last and best frames carry their positions.
    pressure_gpa: constant pressure (GPa) by ASE's NPTBerendsen isotropic cell scaling (taup fs, compressibility 1/GPa:
    :func:`jaxmat.heo.langevin.run`), None: fixed cells. checkpoint, checkpoint_every, model_id, on_checkpoint: as
    :func:`jaxmat.heo.anneal.anneal`."""
    sampling.check_inputs(structures, force_field, temperatures)
    params, evaluate = force_field.device_model()
    cutoff = float(getattr(force_field, "r_max", None) or force_field.cutoff)
    lay = swap.layout(structures, temperatures, force_field.device_species, cutoff)
    n_rep, n_temps = lay["n_replicas"], len(temperatures)
    pbc = np.concatenate([np.stack([structures[r // n_temps].pbc for r in range(n_rep)]), np.ones((1, 3), bool)])
    md = {"dt": timestep_fs * units.fs, "kT": np.append(lay["kT"], 0.0), "friction": np.full(n_rep + 1, friction_per_fs / units.fs),
          "skin": float(skin), "barostat": {} if pressure_gpa is None else {
              "pressure": pressure_gpa * units.GPa, "taup": taup_fs * units.fs, "compressibility": compressibility_per_gpa / units.GPa}}
    observe = sampling.observer(structures, lay, n_temps)
    manifest = sampling.manifest(structures, temperatures, seed, lay["sites"].shape[1], checkpoint_every, model_id, False,
                                md_steps=int(md_steps), timestep_fs=float(timestep_fs), friction_per_fs=float(friction_per_fs),
                                skin=float(skin), **({} if pressure_gpa is None else {"pressure_gpa": float(pressure_gpa),
                                                      "taup_fs": float(taup_fs), "compressibility_per_gpa": float(compressibility_per_gpa)}))
    state, traces, keys, resumed = sampling.start(checkpoint, manifest, evaluate, params, lay, seed)
    if not resumed:
        positions = np.asarray(lay["graph"]["positions"], float)
        cells = np.asarray(lay["graph"]["cells"], float)[:-1]
        state = dict(state, positions=positions, velocities=np.zeros_like(positions), best_positions=positions.copy(),
                     md_keys=np.asarray(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)), cells=cells, best_cells=cells.copy())
    graph = _graph(lay, np.asarray(state["positions"], float), np.asarray(state["cells"], float), pbc, cutoff)
    while int(state["sweep"]) < sweeps:
        state, graph, record = _round(evaluate, params, lay, graph, state, md_steps, observe, pbc, cutoff, md)
        for k in sampling.TRACE_KEYS:
            traces[k].append(record[k])
        done = int(state["sweep"])
        if checkpoint is not None and (done % checkpoint_every == 0 or done == sweeps):
            sampling.save(checkpoint, state, traces, manifest)
            if on_checkpoint is not None:
                on_checkpoint(done)
    return sampling.place_geometry(sampling.collect(structures, lay, state, traces, temperatures, n_temps), state)
