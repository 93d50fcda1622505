"""Batched swap Monte Carlo of cations on fixed geometries, on the device.

Many replicas (a structure at a temperature each) run as one batch in the neighbour-matrix layout of the
device relaxation loop, with any force field's ``device_model()`` energy (the JAX MACE, pair potentials,
:class:`jaxmat.heo.pair_model.SpeciesPairEnergy`). One *attempt*: every replica picks a cation site i
uniformly, then a cation site j uniformly among those holding another species, swaps the two and accepts
by Metropolis at its own kT (k_B in eV/K); anions never move, so compositions are conserved exactly. The
proposal is symmetric: an unlike pair {i, j} holding species a and b is drawn with probability
(1 / (N_c - n_a) + 1 / (N_c - n_b)) / N_c whatever the arrangement (N_c cation sites, n_a of them holding a),
the same before and after the swap. A *sweep* is N_c
attempts (N_c of the largest replica). Swaps move no atom, so the neighbour list built once at the model's
cutoff (:func:`jaxmat.forcefields.neighbors.neighbor_matrix`) stays exact.

Pure functions over an explicit state pytree: :func:`init` and :func:`sweeps`; every replica owns a PRNG key,
so its numbers do not depend on the other replicas or on how the sweeps are chunked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import SystemBatch
from jaxmat.forcefields.neighbors import device_outgoing, neighbor_matrix

K_B = 8.617333262e-5  # Boltzmann constant, eV/K
ANIONS = frozenset({7, 8, 9, 15, 16, 17, 34, 35, 53})  # N O F P S Cl Se Br I never swap


def labels_of(numbers_list) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct atomic numbers of all structures (sorted) and each structure's labels into them."""
    elements = np.unique(np.concatenate([np.asarray(n) for n in numbers_list]))
    return elements, [np.searchsorted(elements, n).astype(np.int32) for n in numbers_list]


def layout(structures, temperatures, species_of, cutoff: float) -> dict:
    """Host arrays of the replicas: every structure at every temperature (K), structure-major (replica
    r = structure r // T at temperature r % T). species_of(numbers) -> the model's species indices; cutoff
    (Å): the model's. Keys: graph (positions, cells, species_table, system_index, neighbors, translations,
    mask, outgoing), labels (rows,) int32 into ``elements``, sites (R, C) cation rows (padding points at
    the padding row), n_sites (R,), kT (R,) eV, elements, n_replicas."""
    temperatures = np.asarray(temperatures, float)
    copies = [(atoms, t) for atoms in structures for t in temperatures]
    elements, labels = labels_of([a.numbers for a, _ in copies])
    n_atoms = sum(len(a) for a, _ in copies)
    rows, n_systems = n_atoms + 1, len(copies) + 1
    system_index = np.concatenate([np.full(len(a), r) for r, (a, _) in enumerate(copies)] + [[len(copies)]]).astype(np.int32)
    positions = np.concatenate([a.positions for a, _ in copies])
    cells = np.concatenate([np.stack([np.asarray(a.cell[:], float) for a, _ in copies]), np.eye(3)[None]])
    lists = model_lists(positions, cells[:-1], np.stack([a.pbc for a, _ in copies]), system_index[:-1], rows, cutoff)
    cation = ~np.isin(elements, list(ANIONS))
    starts = np.concatenate([[0], np.cumsum([len(a) for a, _ in copies])])
    site_rows = [starts[r] + np.flatnonzero(cation[lab]) for r, lab in enumerate(labels)]
    n_cols = max(max(len(s) for s in site_rows), 1)
    sites = np.full((len(copies), n_cols), n_atoms, np.int32)
    for r, s in enumerate(site_rows):
        sites[r, : len(s)] = s
    graph = {"positions": np.concatenate([positions, np.zeros((1, 3))]), "cells": cells,
             "species_table": np.asarray(species_of(elements), np.int32), "system_index": system_index, **lists}
    return {"graph": graph, "labels": np.concatenate(labels + [np.zeros(1, np.int32)]), "sites": sites,
            "n_sites": np.array([len(s) for s in site_rows], np.int32),
            "kT": K_B * np.array([t for _, t in copies]), "elements": elements, "n_replicas": len(copies)}


def model_lists(positions, cells, pbc, system_index, rows: int, cutoff: float) -> dict:
    """The model's neighbour list (cutoff Å, no skin: swaps move no atom) of the real atoms at these positions, padded
    to ``rows`` rows: neighbors, translations, mask and outgoing slots."""
    n = len(system_index)
    batch = SystemBatch(np.asarray(positions, float)[:n], np.zeros(n, int), np.asarray(cells, float), np.asarray(pbc), system_index)
    matrix = neighbor_matrix(batch, cutoff, rows)
    width = max(int(np.bincount(matrix.neighbors[matrix.mask], minlength=rows).max(initial=0)), 1)
    outgoing, _ = device_outgoing(jnp.asarray(matrix.neighbors), jnp.asarray(matrix.mask), width)
    return {"neighbors": matrix.neighbors, "translations": matrix.translations, "mask": matrix.mask, "outgoing": np.asarray(outgoing)}


def energies(evaluate, params, graph, labels):
    """Energies (R + 1,) eV of the replicas with these labels (the last: padding)."""
    model_graph = {k: v for k, v in graph.items() if k != "species_table"}
    return evaluate(params, dict(model_graph, species=graph["species_table"][labels]))[0]


@functools.partial(jax.jit, static_argnames=("evaluate",))
def init(evaluate, params, graph, labels, keys) -> dict:
    """The sampler's state: labels (rows,), energy (R,) eV, the lowest energy met and its labels, attempted and
    accepted swaps and accepted replica exchanges (R,), keys (R, 2) uint32 (one PRNG key per replica), sweep (the sweeps done)."""
    energy = energies(evaluate, params, graph, labels)[:-1]
    n = energy.shape[0]
    return {"labels": labels, "energy": energy, "best_energy": energy, "best_labels": labels,
            "attempted": jnp.zeros(n, jnp.int32), "accepted": jnp.zeros(n, jnp.int32), "exchanged": jnp.zeros(n, jnp.int32), "keys": keys,
            "sweep": jnp.zeros((), jnp.int32)}


def propose(labels, sites, n_sites, keys):
    """Every replica's proposal (the docstring of this module): (keys advanced, swapped labels (rows,), possible (R,): the
    replica has two cation species, u (R,) in (0, 1] for the Metropolis test)."""
    split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
    keys, k_i, k_j, k_accept = split[:, 0], split[:, 1], split[:, 2], split[:, 3]
    held = labels[sites]  # (R, C)
    valid = jnp.arange(sites.shape[1])[None, :] < n_sites[:, None]
    first = jnp.minimum((jax.vmap(jax.random.uniform)(k_i) * n_sites).astype(jnp.int32), n_sites - 1)
    label_i = jnp.take_along_axis(held, first[:, None], 1)[:, 0]
    other = valid & (held != label_i[:, None])
    scores = jnp.where(other, jax.vmap(lambda k: jax.random.uniform(k, (sites.shape[1],)))(k_j), -1.0)
    second = jnp.argmax(scores, axis=1)
    row_i = jnp.take_along_axis(sites, first[:, None], 1)[:, 0]
    row_j = jnp.take_along_axis(sites, second[:, None], 1)[:, 0]
    swapped = labels.at[row_i].set(labels[row_j]).at[row_j].set(label_i)
    return keys, swapped, jnp.any(other, axis=1), 1.0 - jax.vmap(jax.random.uniform)(k_accept)


def metropolis(state, swapped, new_energy, possible, u, kT, system_index, sign: float = 1.0):
    """The state after the Metropolis test of every replica's proposal (``swapped`` labels, their energy (R,) eV); the
    accepted mask (R,) is the second value. sign -1 flips the rule (a broken sampler for the tests to catch)."""
    accept = possible & jnp.isfinite(new_energy) & (jnp.log(u) * kT < -sign * (new_energy - state["energy"]))
    taken = jnp.concatenate([accept, jnp.zeros(1, bool)])[system_index]
    labels = jnp.where(taken, swapped, state["labels"])
    energy = jnp.where(accept, new_energy, state["energy"])
    better = energy < state["best_energy"]
    best_labels = jnp.where(jnp.concatenate([better, jnp.zeros(1, bool)])[system_index], labels, state["best_labels"])
    return dict(state, labels=labels, energy=energy, best_energy=jnp.where(better, energy, state["best_energy"]),
                best_labels=best_labels, attempted=state["attempted"] + possible, accepted=state["accepted"] + accept), accept


def attempt(evaluate, params, graph, sites, n_sites, kT, state, sign: float = 1.0):
    """One swap attempt in every replica (:func:`propose`, unrelaxed energies, :func:`metropolis`)."""
    keys, swapped, possible, u = propose(state["labels"], sites, n_sites, state["keys"])
    new_energy = energies(evaluate, params, graph, swapped)[:-1]
    state, _ = metropolis(state, swapped, new_energy, possible, u, kT, graph["system_index"], sign)
    return dict(state, keys=keys)


def partners(n_structures: int, n_temperatures: int, n_atoms) -> tuple[np.ndarray, np.ndarray]:
    """Replica exchange pairs of the structure-major layout (:func:`layout`): for parity p (0, 1; alternating sweeps) the
    partner (2, R) of every replica - the same structure at the next (or previous) temperature in the given order, pairs
    (t, t + 1) with t % 2 == p; itself where it has none - and the partner's row of every row (2, rows)."""
    n_rep = n_structures * n_temperatures
    starts = np.concatenate([[0], np.cumsum(np.repeat(np.asarray(n_atoms), n_temperatures))])
    partner = np.tile(np.arange(n_rep), (2, 1))
    for p in (0, 1):
        for r in range(n_rep):
            t = r % n_temperatures
            if t % 2 == p and t + 1 < n_temperatures:
                partner[p, r], partner[p, r + 1] = r + 1, r
    rows = np.tile(np.arange(starts[-1] + 1), (2, 1))
    for p in (0, 1):
        for r in range(n_rep):
            rows[p, starts[r]: starts[r + 1]] += starts[partner[p, r]] - starts[r]
    return partner.astype(np.int32), rows.astype(np.int32)


def exchange(state, kT, partner, partner_rows, system_index):
    """Parallel tempering between the replica pairs ``partner`` (R,): the pair's arrangements are exchanged with
    probability min(1, exp((1/kT_r - 1/kT_s) (E_r - E_s))), decided by the lower replica's random number."""
    split = jax.vmap(lambda k: jax.random.split(k, 2))(state["keys"])
    u = 1.0 - jax.vmap(jax.random.uniform)(split[:, 1])
    energy = state["energy"]
    gain = (1.0 / kT - 1.0 / kT[partner]) * (energy - energy[partner])  # symmetric in the pair
    accept = (partner != jnp.arange(partner.shape[0])) & (jnp.log(u[jnp.minimum(partner, jnp.arange(partner.shape[0]))]) < gain)
    taken = jnp.concatenate([accept, jnp.zeros(1, bool)])[system_index]
    labels = jnp.where(taken, state["labels"][partner_rows], state["labels"])
    energy = jnp.where(accept, energy[partner], energy)
    better = energy < state["best_energy"]
    best_labels = jnp.where(jnp.concatenate([better, jnp.zeros(1, bool)])[system_index], labels, state["best_labels"])
    return dict(state, labels=labels, energy=energy, best_energy=jnp.where(better, energy, state["best_energy"]),
                best_labels=best_labels, exchanged=state["exchanged"] + accept, keys=split[:, 0])


@functools.partial(jax.jit, static_argnames=("evaluate", "n_sweeps", "attempts", "observe", "sign"))
def sweeps(evaluate, params, graph, sites, n_sites, kT, state, n_sweeps: int, attempts: int, observe=None, sign: float = 1.0,
           pairs=None):
    """n_sweeps sweeps of ``attempts`` attempts each (one compiled program). Returns (state, trace): trace holds per
    sweep and replica the energy (eV) after it, its acceptance ratio and observe(labels) (e.g. Warren-Cowley
    alpha: :func:`jaxmat.heo.sro.warren_cowley`) when given. pairs: (partner, partner_rows) of :func:`partners` for a
    replica exchange after every sweep (parity alternating with the sweep count), None for none."""

    def one_sweep(state, _):
        before = state["accepted"]
        state = jax.lax.fori_loop(0, attempts, lambda _, s: attempt(evaluate, params, graph, sites, n_sites, kT, s, sign=sign), state)
        if pairs is not None:
            parity = state["sweep"] % 2
            state = exchange(state, kT, pairs[0][parity], pairs[1][parity], graph["system_index"])
        record = {"energy": state["energy"], "acceptance": (state["accepted"] - before) / attempts}
        if observe is not None:
            record["observed"] = observe(state["labels"])
        return dict(state, sweep=state["sweep"] + 1), record

    return jax.lax.scan(one_sweep, state, None, length=n_sweeps)
