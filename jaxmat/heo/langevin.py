"""Langevin NVT molecular dynamics of many systems at once, on the device: ASE's Langevin propagator.

The step is the one of ``ase.md.langevin.Langevin`` (Vanden-Eijnden & Ciccotti, Chem. Phys. Lett. 429, 310
(2006), eq. 23), per system: temperature kT (eV) and friction gamma (1 / ASE time unit) of its own, its
random numbers xi, eta ~ N(0, 1) (rows, 3), optionally ASE's ``fixcm`` (the random displacements and
velocity kicks of each system made free of centre-of-mass motion, scaled by sqrt(n / (n - 1))). Units are
ASE's: positions Å, masses amu, velocities Å / ASE time, dt in ASE time (``ase.units.fs`` per fs), forces
eV/Å. Friction 0 is velocity Verlet (NVE). With a pressure, every step starts with ASE's NPTBerendsen cell scaling
(:func:`berendsen_scale`: isotropic, cell and positions scaled together; the forces of that step's first half kick are
those before the scaling, off by O(mu - 1)).

Atoms move, so the neighbour list is the relaxation loop's kind: built on the host with a skin
(:func:`jaxmat.forcefields.neighbors.neighbor_matrix` at cutoff + skin), the model evaluating the pairs within
its cutoff picked out before every evaluation (:func:`jaxmat.forcefields.neighbors.device_near_list`); the
compiled loop stops before a step on a list that may be stale (:func:`jaxmat.forcefields.neighbors.list_is_stale`)
and :func:`run` rebuilds it on the host and goes on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import SystemBatch
from jaxmat.forcefields.neighbors import device_near_list, list_is_stale, list_reach, neighbor_matrix


def coefficients(dt: float, kT, friction, masses, system_index) -> dict:
    """ASE's c1..c5 per row (rows, 1) for time step dt (ASE time), kT (S,) eV, friction (S,) per ASE time, masses
    (rows,) amu."""
    kT, friction = jnp.asarray(kT)[system_index][:, None], jnp.asarray(friction)[system_index][:, None]
    sigma = jnp.sqrt(2.0 * kT * friction / masses[:, None])
    c5 = dt**1.5 * sigma / (2.0 * np.sqrt(3.0))
    return {"c1": jnp.full_like(sigma, dt / 2.0) - dt * dt * friction / 8.0, "c2": dt * friction / 2.0 - dt * dt * friction**2 / 8.0,
            "c3": np.sqrt(dt) * sigma / 2.0 - dt**1.5 * friction * sigma / 8.0, "c4": friction / 2.0 * c5, "c5": c5}


def _without_com(vectors, weights, system_index, row_mask, n_systems, n_atoms):
    """ASE's fixcm on a random term: minus the per-system weighted mean (sum(w x) / (w n)), times sqrt(n / (n - 1))."""
    total = jax.ops.segment_sum(jnp.where(row_mask[:, None], vectors * weights, 0.0), system_index, n_systems)
    n = n_atoms[system_index][:, None]
    return jnp.where(row_mask[:, None], (vectors - total[system_index] / (weights * n)) * jnp.sqrt(n / (n - 1.0)), 0.0)


def step(force_fn, positions, velocities, forces, masses, c, dt: float, xi, eta, system_index, row_mask, n_atoms,
         fix_com: bool = False):
    """One Langevin step of every system from positions, velocities and the forces there. force_fn(positions) ->
    (energy, forces). Returns (positions, velocities, forces, energy) after it. n_atoms (S,) atoms per system."""
    m = masses[:, None]
    random_position = c["c5"] * eta
    random_velocity = c["c3"] * xi - c["c4"] * eta
    if fix_com:
        n_systems = n_atoms.shape[0]
        random_position = _without_com(random_position, jnp.ones_like(m), system_index, row_mask, n_systems, n_atoms)
        random_velocity = _without_com(random_velocity, m, system_index, row_mask, n_systems, n_atoms)
    v = velocities + c["c1"] * forces / m - c["c2"] * velocities + random_velocity
    new_positions = positions + dt * v + random_position
    v = (new_positions - positions - random_position) / dt
    energy, new_forces = force_fn(new_positions)
    v = v + c["c1"] * new_forces / m - c["c2"] * v + random_velocity
    keep = row_mask[:, None]
    return jnp.where(keep, new_positions, positions), jnp.where(keep, v, 0.0), new_forces, energy


def kinetic_temperature(velocities, masses, system_index, n_systems: int, n_atoms, fixed_dof=0):
    """Instantaneous temperature (S,) K of every system: 2 KE / (k_B (3 n - fixed_dof)) as ASE's get_temperature."""
    from ase import units

    kinetic = 0.5 * jax.ops.segment_sum(masses * jnp.sum(velocities**2, axis=-1), system_index, n_systems)
    return 2.0 * kinetic / (units.kB * (3.0 * n_atoms - fixed_dof))


def berendsen_scale(state, masses, system_index, real_system, pressure, factor):
    """ASE's NPTBerendsen cell factor per system: 1 - factor (P0 - P), P = -tr(stress) / 3 + sum m v^2 / (3 V) (the
    ideal-gas term included; stress eV/Å^3, positive tensile), factor = dt compressibility / (3 taup); 1 for padding."""
    cells = state["cells"]
    volume = jnp.abs(jnp.linalg.det(cells))
    twice_kinetic = jax.ops.segment_sum(masses * jnp.sum(state["velocities"] ** 2, axis=-1), system_index, cells.shape[0])
    current = -jnp.trace(state["stress"], axis1=1, axis2=2) / 3.0 + twice_kinetic / (3.0 * volume)
    return jnp.where(real_system, 1.0 - factor * (pressure - current), 1.0)


@functools.partial(jax.jit, static_argnames=("evaluate", "fix_com", "dt", "barostat"))
def _segment(evaluate, params, graph, state, c, dt, masses, n_atoms, limits, fix_com: bool, barostat: bool = False):
    """Langevin steps until limits["steps"] or a list that may be stale (checked before every step); with barostat,
    each step starts by scaling every system's cell and positions by :func:`berendsen_scale`."""
    row_mask, index = graph["row_mask"], graph["system_index"]
    n_slots, width = graph["neighbors"].shape[1], graph["outgoing"].shape[1]
    real_system = jax.ops.segment_max(row_mask.astype(jnp.int32), index, graph["cells"].shape[0]) > 0

    def forces_at(positions, cells):
        *near, _ = device_near_list(positions, cells, index, graph["neighbors"], graph["translations"], graph["mask"],
                                    limits["cutoff"], n_slots, width)
        model_graph = dict(positions=positions, cells=cells, species=graph["species"], system_index=index,
                           **dict(zip(("neighbors", "translations", "mask", "outgoing"), near)))
        energy, forces, stress = evaluate(params, model_graph)
        return (energy, stress), forces  # step() hands the first back as it gets it

    def stale(state):
        if not barostat:
            return list_is_stale(state["positions"], graph["reference"], row_mask, limits["skin"])
        return list_is_stale(state["positions"], graph["reference"], row_mask, limits["skin"], state["cells"], graph["cells"],
                             graph["reach"], real_system)

    def body(carry):
        state, done = carry
        split = jax.vmap(lambda k: jax.random.split(k, 3))(state["keys"])  # one key per system: its own numbers
        block, owner = graph["local"], jnp.minimum(index, state["keys"].shape[0] - 1)
        width = graph["block"].shape[0]
        xi, eta = (jax.vmap(lambda k: jax.random.normal(k, (width, 3)))(split[:, k])[owner, block] for k in (1, 2))
        positions, cells = state["positions"], state["cells"]
        if barostat:  # forces stay those before the scaling (off by O(mu - 1), as the step's half kick)
            mu = berendsen_scale(state, masses, index, real_system, limits["pressure"], limits["factor"])
            positions, cells = jnp.where(row_mask[:, None], positions * mu[index][:, None], positions), cells * mu[:, None, None]
        positions, velocities, forces, (energy, stress) = step(lambda p: forces_at(p, cells), positions, state["velocities"],
                                                               state["forces"], masses, c, dt, xi, eta, index, row_mask, n_atoms, fix_com)
        return dict(state, positions=positions, velocities=velocities, forces=forces, energy=energy, cells=cells,
                    stress=stress if barostat else state["stress"],  # unused at fixed cells: left for XLA to drop
                    keys=split[:, 0], steps=state["steps"] + 1), done + 1

    def going(carry):
        state, done = carry
        return (done < limits["steps"]) & ~stale(state)

    return jax.lax.while_loop(going, body, (state, jnp.zeros((), jnp.int32)))


def md_graph(positions, cells, pbc, system_index, species, row_mask, cutoff: float, skin: float, at_least=(0, 0)) -> dict:
    """Host arrays of the MD loop's graph: the skin list (cutoff + skin, Å) at these positions, its reference positions,
    per-row local index (for the random numbers) and the model's species; rows (R,) include padding rows. at_least:
    (slots, outgoing width) not to go below (a rebuilt list keeps the compiled shape unless it must grow)."""
    from jaxmat.padding import bucket

    positions, system_index = np.asarray(positions, float), np.asarray(system_index)
    real = np.asarray(row_mask)
    n_real, rows = int(real.sum()), len(positions)
    n_systems = int(system_index[real].max()) + 1
    batch = SystemBatch(positions[:n_real], np.zeros(n_real, int), np.asarray(cells, float)[:n_systems], np.asarray(pbc)[:n_systems],
                        system_index[:n_real])
    matrix = neighbor_matrix(batch, cutoff + skin, rows)
    slots = max(bucket(max(int(np.ceil(1.2 * matrix.slots_needed)), 1), 4), at_least[0])  # a margin: fewer new shapes
    from jaxmat.forcefields.neighbors import pad_neighbor_matrix

    matrix = pad_neighbor_matrix(matrix, n_real, rows, slots)
    width = max(bucket(max(int(np.ceil(1.2 * np.bincount(matrix.neighbors[matrix.mask], minlength=rows).max(initial=0))), 1), 4),
                at_least[1])
    starts = np.searchsorted(system_index, np.arange(system_index.max() + 1))
    local = np.arange(rows) - starts[system_index]
    return {"positions": positions, "cells": np.asarray(cells, float), "species": np.asarray(species), "system_index": system_index,
            "row_mask": real, "neighbors": matrix.neighbors, "translations": matrix.translations, "mask": matrix.mask,
            "outgoing": np.zeros((rows, width), np.int32), "reference": positions.copy(), "local": local.astype(np.int32),
            "block": np.zeros(int(np.bincount(system_index[real]).max())),
            "reach": np.asarray(list_reach(matrix.translations, matrix.mask, system_index, len(cells)))}


def init_state(evaluate, params, graph, velocities, keys, cutoff: float) -> dict:
    """MD state at the graph's positions and cells: positions, cells, velocities (Å / ASE time), forces, energy and stress
    there, keys, steps."""
    _, n_slots = graph["neighbors"].shape
    width = graph["outgoing"].shape[1]
    *near, _ = device_near_list(jnp.asarray(graph["positions"]), jnp.asarray(graph["cells"]), jnp.asarray(graph["system_index"]),
                                jnp.asarray(graph["neighbors"]), jnp.asarray(graph["translations"]), jnp.asarray(graph["mask"]),
                                cutoff, n_slots, width)
    model_graph = {k: jnp.asarray(graph[k]) for k in ("positions", "cells", "species", "system_index")}
    energy, forces, stress = evaluate(params, dict(model_graph, **dict(zip(("neighbors", "translations", "mask", "outgoing"), near))))
    return {"positions": model_graph["positions"], "cells": model_graph["cells"], "velocities": jnp.asarray(velocities),
            "forces": forces, "energy": energy, "stress": stress, "keys": keys, "steps": jnp.zeros((), jnp.int32)}


def run(evaluate, params, graph, state, n_steps: int, *, dt: float, kT, friction, masses, pbc, cutoff: float, skin: float = 1.0,
        fix_com: bool = False, stats: dict | None = None, pressure=None, taup: float = 100.0, compressibility: float = 0.0):
    """n_steps Langevin steps of every system (kT (S,) eV, friction (S,) per ASE time, dt ASE time, masses (rows,) amu),
    the list rebuilt on the host whenever it may be stale. Returns (state, graph); stats counts the rebuilds.
    pressure (eV/Å^3, scalar or (S,)): constant pressure by ASE's NPTBerendsen cell scaling (isotropic; taup ASE time,
    compressibility per eV/Å^3) before every step; None: fixed cells."""
    host_index, host_real = np.asarray(graph["system_index"]), np.asarray(graph["row_mask"])
    n_systems = graph["cells"].shape[0]
    n_atoms = jnp.asarray(np.bincount(host_index[host_real], minlength=n_systems).clip(1), float)
    masses = jnp.asarray(masses, float)
    c = coefficients(dt, kT, friction, masses, jnp.asarray(host_index))
    graph = {k: jnp.asarray(v) for k, v in graph.items()}  # on the device from here (a no-op for device arrays)
    done = 0
    while done < n_steps:
        limits = {"cutoff": jnp.asarray(cutoff), "skin": jnp.asarray(skin), "steps": jnp.asarray(n_steps - done)}
        if pressure is not None:
            limits |= {"pressure": jnp.broadcast_to(jnp.asarray(pressure, float), (n_systems,)),
                       "factor": jnp.asarray(dt * compressibility / (3.0 * taup))}
        state, taken = _segment(evaluate, params, graph, state, c, dt, masses, n_atoms, limits, fix_com, pressure is not None)
        done += int(taken)
        if done < n_steps:  # stale: the host rebuilds the list at the current positions
            graph = md_graph(np.asarray(state["positions"]), np.asarray(state["cells"]), pbc, host_index,
                             np.asarray(graph["species"]), host_real, cutoff, skin,
                             (graph["neighbors"].shape[1], graph["outgoing"].shape[1]))
            graph = {k: jnp.asarray(v) for k, v in graph.items()}
            if stats is not None:
                stats["rebuilds"] = stats.get("rebuilds", 0) + 1
    return state, graph
