"""Hybrid swap Monte Carlo / Langevin MD: after every swap sweep (:mod:`jaxmat.heo.swap`), ``md_steps`` Langevin NVT
steps (:mod:`jaxmat.heo.langevin`) of every replica at its own temperature, all replicas one batch on the device.

Each atom keeps its site's velocity when two cations swap (the thermostat re-equilibrates the kinetic energy; masses
follow the species). Between sweeps the MD loop owns the geometry: its skin list is rebuilt whenever it may be stale,
and after the MD segment the swap sampler's list (the model's cutoff, no skin) is rebuilt at the new positions and the
energies re-evaluated there. The lowest energy met is kept with its arrangement and geometry. A library call (no
checkpoints yet): ``python -m jaxmat.heo.anneal`` runs swaps on fixed geometries only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.data import atomic_masses

from jaxmat.heo import anneal, langevin, swap

_energies = jax.jit(swap.energies, static_argnums=0)
_start = jax.jit(langevin.init_state, static_argnums=0, static_argnames=("cutoff",))


def hybrid(structures, force_field, temperatures, sweeps: int, md_steps: int, *, seed: int = 0, timestep_fs: float = 2.0,
           friction_per_fs: float = 0.01, skin: float = 1.0) -> anneal.AnnealResult:
    """``sweeps`` rounds of one swap sweep then ``md_steps`` Langevin steps (timestep fs, friction 1/fs, skin Å) of every
    structure at every temperature (K); velocities start at zero. The result's trace energies are those after each
    round's MD; last and best frames carry their positions; alpha is not traced (jaxmat.heo.sro on the frames)."""
    anneal.check_inputs(structures, force_field, temperatures)
    params, evaluate = force_field.device_model()
    cutoff = float(getattr(force_field, "r_max", None) or force_field.cutoff)
    lay = swap.layout(structures, temperatures, force_field.device_species, cutoff)
    n_rep, rows = lay["n_replicas"], len(lay["labels"])
    host = lay["graph"]
    index, real = host["system_index"], np.arange(rows) < rows - 1
    pbc = np.concatenate([np.stack([structures[r // len(temperatures)].pbc for r in range(n_rep)]), np.ones((1, 3), bool)])
    graph = {k: jnp.asarray(v) for k, v in host.items()}
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.PRNGKey(seed), r))(jnp.arange(n_rep))
    state = swap.init(evaluate, params, graph, jnp.asarray(lay["labels"]), keys)
    md_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    arrays = (jnp.asarray(lay["sites"]), jnp.asarray(lay["n_sites"]), jnp.asarray(lay["kT"]))
    kT, friction = np.append(lay["kT"], 0.0), np.full(n_rep + 1, friction_per_fs / units.fs)
    positions, velocities = host["positions"].copy(), np.zeros((rows, 3))
    best_positions = positions.copy()
    traces = {"energy": [], "acceptance": [], "observed": []}
    for _ in range(sweeps):
        best_before = np.asarray(state["best_energy"])
        state, trace = swap.sweeps(evaluate, params, graph, *arrays, state, n_sweeps=1, attempts=lay["sites"].shape[1])
        improved = np.repeat(np.append(np.asarray(state["best_energy"]) < best_before, False), np.bincount(index))
        best_positions[improved] = positions[improved]
        labels = np.asarray(state["labels"])
        masses = np.where(real, atomic_masses[lay["elements"][labels]], 1.0)
        md = langevin.md_graph(positions, host["cells"], pbc, index, host["species_table"][labels], real, cutoff, skin)
        md_state = _start(evaluate, params, {k: jnp.asarray(v) for k, v in md.items()}, jnp.asarray(velocities), md_keys,
                          cutoff=cutoff)
        md_state, _ = langevin.run(evaluate, params, md, md_state, md_steps, dt=timestep_fs * units.fs, kT=kT, friction=friction,
                                   masses=masses, pbc=pbc, cutoff=cutoff, skin=skin)
        positions, velocities, md_keys = np.asarray(md_state["positions"], float), np.asarray(md_state["velocities"]), md_state["keys"]
        host = dict(host, positions=positions, **swap.model_lists(positions, host["cells"][:-1], pbc[:-1], index[:-1], rows, cutoff))
        graph = {k: jnp.asarray(v) for k, v in host.items()}
        energy = _energies(evaluate, params, graph, state["labels"])[:-1]
        lower = energy < state["best_energy"]
        moved = np.repeat(np.append(np.asarray(lower), False), np.bincount(index))
        best_positions[moved] = positions[moved]
        state = dict(state, energy=energy, best_energy=jnp.where(lower, energy, state["best_energy"]),
                     best_labels=jnp.where(jnp.asarray(moved), state["labels"], state["best_labels"]))
        traces["energy"].append(np.asarray(energy)[None])
        traces["acceptance"].append(np.asarray(trace["acceptance"]))
    traces["observed"] = []
    result = anneal.collect(structures, lay, state, traces, temperatures, len(temperatures))
    starts = np.concatenate([[0], np.cumsum([len(a) for a in result.last])])
    for r in range(n_rep):
        result.last[r].positions = positions[starts[r]: starts[r + 1]]
        result.best[r].positions = best_positions[starts[r]: starts[r + 1]]
    return result
