"""Langevin MD of jaxmat.heo.langevin: the step is ASE's Langevin step for the same random numbers (with and without
fixcm), the kinetic temperature's mean and variance match the target, NVE (friction 0) keeps the energy."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.build import bulk

from jaxmat.forcefields.base import ase_calculator
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.heo import langevin

LJ = dict(sigma=3.4, epsilon=0.0104, cutoff=7.0)  # argon, eV and Å


def argon(n_copies=1, seed=0):
    cells = []
    for k in range(n_copies):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=seed + k)
        cells.append(atoms)
    return cells


def packed(cells, model, skin=1.0):
    n = sum(len(a) for a in cells)
    index = np.concatenate([np.full(len(a), k) for k, a in enumerate(cells)] + [[len(cells)]]).astype(np.int32)
    positions = np.concatenate([a.positions for a in cells] + [np.zeros((1, 3))])
    cell_array = np.concatenate([np.stack([a.cell[:] for a in cells]), np.eye(3)[None]])
    pbc = np.concatenate([np.stack([a.pbc for a in cells]), np.ones((1, 3), bool)])
    masses = np.concatenate([a.get_masses() for a in cells] + [[1.0]])
    graph = langevin.md_graph(positions, cell_array, pbc, index, np.zeros(n + 1, np.int32), np.arange(n + 1) < n, model.cutoff, skin)
    return graph, masses, pbc


@pytest.mark.parametrize("fix_com", [False, True])
def test_step_is_ases_langevin_step(x64, fix_com):
    from ase.md.langevin import Langevin

    model = lennard_jones(**LJ)
    params, evaluate = model.device_model()
    atoms = argon()[0]
    rng = np.random.default_rng(3)
    atoms.set_velocities(rng.normal(scale=0.005, size=(len(atoms), 3)))
    reference = atoms.copy()
    reference.calc = ase_calculator(model)
    dt, temperature, friction = 5 * units.fs, 300.0, 0.02 / units.fs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ASE deprecates fixcm=True; it is its default still
        dynamics = Langevin(reference, dt, temperature_K=temperature, friction=friction, fixcm=fix_com, rng=np.random.default_rng(7))
    graph, masses, pbc = packed([atoms], model)
    state = langevin.init_state(evaluate, params, graph, np.concatenate([atoms.get_velocities(), np.zeros((1, 3))]),
                                jnp.zeros((1, 2), jnp.uint32), model.cutoff)
    ours = np.random.default_rng(7)
    index, real = jnp.asarray(graph["system_index"]), jnp.asarray(graph["row_mask"])
    c = langevin.coefficients(dt, [units.kB * temperature, 0.0], [friction, 0.0], jnp.asarray(masses), index)
    d = {k: jnp.asarray(v) for k, v in graph.items()}

    def forces_at(positions):
        energy, forces, _ = evaluate(params, dict(d, positions=positions))
        return energy, forces

    positions, velocities, forces = state["positions"], state["velocities"], state["forces"]
    step = jax.jit(langevin.step, static_argnums=(0, 6), static_argnames=("fix_com",))
    for _ in range(4):
        xi, eta = (np.concatenate([ours.standard_normal(size=(len(atoms), 3)), np.zeros((1, 3))]) for _ in range(2))
        positions, velocities, forces, _ = step(forces_at, positions, velocities, forces, jnp.asarray(masses), c, dt,
                                                         jnp.asarray(xi), jnp.asarray(eta), index, real, jnp.asarray([32.0, 1.0]),
                                                         fix_com=fix_com)
        dynamics.run(1)
        np.testing.assert_allclose(np.asarray(positions)[:-1], reference.positions, atol=1e-10)
        np.testing.assert_allclose(np.asarray(velocities)[:-1], reference.get_velocities(), atol=1e-12)


def thermalised(temperature, friction, samples, copies=16, seed=0, every=25):
    model = lennard_jones(**LJ)
    params, evaluate = model.device_model()
    cells = argon(copies, seed)
    graph, masses, pbc = packed(cells, model)
    keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.PRNGKey(seed), k))(jnp.arange(copies))
    state = langevin.init_state(evaluate, params, graph, np.zeros_like(graph["positions"]), keys, model.cutoff)
    kT = np.full(copies + 1, units.kB * temperature)
    gamma = np.full(copies + 1, friction)
    found, energies, stats = [], [], {}
    n = jnp.asarray(np.bincount(graph["system_index"], minlength=copies + 1), float)
    for _ in range(samples):
        state, graph = langevin.run(evaluate, params, graph, state, every, dt=5 * units.fs, kT=kT, friction=gamma, masses=masses,
                                    pbc=pbc, cutoff=model.cutoff, stats=stats)
        t = langevin.kinetic_temperature(state["velocities"], jnp.asarray(masses), jnp.asarray(graph["system_index"]), copies + 1, n)
        kinetic = np.asarray(t)[:copies] * units.kB * 1.5 * 32
        found.append(np.asarray(t)[:copies])
        energies.append(np.asarray(state["energy"])[:copies] + kinetic)
    return np.array(found), np.array(energies), state, graph, stats


def test_kinetic_temperature_mean_and_variance_match_the_target():
    target = 60.0
    samples, _, _, _, stats = thermalised(target, 0.02 / units.fs, 48)
    late = samples[8:].ravel()  # 16 systems x 40 samples 125 fs apart (velocities decorrelate in 1 / (2 gamma) = 25 fs)
    assert late.mean() == pytest.approx(target, rel=0.03)
    assert late.var() / target**2 == pytest.approx(2 / (3 * 32), rel=0.2)  # canonical: var T / T^2 = 2 / (3 N)
    assert stats.get("rebuilds", 0) >= 1  # atoms moved beyond the skin: the list was rebuilt


def test_nve_energy_is_kept():
    model = lennard_jones(**LJ)
    params, evaluate = model.device_model()
    cells = argon(2, seed=4)
    for atoms in cells:
        atoms.rattle(0.1, seed=9)
    graph, masses, pbc = packed(cells, model)
    state = langevin.init_state(evaluate, params, graph, np.zeros_like(graph["positions"]), jnp.zeros((2, 2), jnp.uint32), model.cutoff)
    n = jnp.asarray(np.bincount(graph["system_index"], minlength=3), float)
    totals = []
    for _ in range(8):
        state, graph = langevin.run(evaluate, params, graph, state, 50, dt=4 * units.fs, kT=np.zeros(3), friction=np.zeros(3),
                                    masses=masses, pbc=pbc, cutoff=model.cutoff)
        t = langevin.kinetic_temperature(state["velocities"], jnp.asarray(masses), jnp.asarray(graph["system_index"]), 3, n)
        totals.append(np.asarray(state["energy"])[:2] + np.asarray(t)[:2] * units.kB * 1.5 * 32)
    totals = np.array(totals)
    assert np.max(np.abs(totals - totals[0])) < 2e-4 * 32  # eV: 0.2 meV/atom over 400 steps of 4 fs
    assert np.max(np.asarray(t)[:2]) > 5.0  # it moved
