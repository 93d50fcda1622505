"""Swap Monte Carlo against exact Boltzmann averages: a 12-site rock-salt cell (Mg6Co6O12) with a first-shell
pair energy is small enough to enumerate every arrangement (924); the sampled mean energy and Warren-Cowley
alpha at several temperatures must match the exact averages within their statistical error, and a sampler
with the Metropolis rule turned around must not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase.build import bulk

from jaxmat.forcefields.neighbors import close_pairs
from jaxmat.heo import anneal as anneal_module
from jaxmat.heo import swap
from jaxmat.heo.pair_model import SpeciesPairEnergy

J_UNLIKE = 0.03  # eV per Mg-Co first-shell pair (counted once): like neighbours are favoured
TEMPERATURES = [400.0, 1200.0, 4000.0]
CUTOFF = 3.5  # Å: the first cation shell of a = 4.2 Å (2.97 Å), not the second (4.2 Å); O-cation pairs carry J = 0


def cell():
    atoms = bulk("MgO", "rocksalt", a=4.2, cubic=True) * (3, 1, 1)
    sites = np.flatnonzero(atoms.numbers != 8)
    atoms.numbers[sites[::2]] = 27
    return atoms, sites


def model():
    return SpeciesPairEnergy([8, 12, 27], [[0, 0, 0], [0, 0, J_UNLIKE], [0, J_UNLIKE, 0]], CUTOFF)


def exact_averages():
    """<E> (eV) and <alpha_MgCo> over all arrangements of 6 Mg and 6 Co, Boltzmann-weighted, per temperature."""
    atoms, sites = cell()
    i, j, _ = close_pairs(atoms.positions[sites], atoms.cell[:], True, CUTOFF, full_list=True)  # ordered pairs, images counted
    z = np.bincount(i, minlength=len(sites))
    assert np.all(z == 12)
    energies, alphas = [], []
    for chosen in itertools.combinations(range(len(sites)), 6):
        co = np.zeros(len(sites), bool)
        co[list(chosen)] = True
        unlike = np.sum(co[i] != co[j])  # ordered
        energies.append(0.5 * unlike * J_UNLIKE)
        p_co_given_mg = np.sum(~co[i] & co[j]) / (12 * 6)
        alphas.append(1.0 - p_co_given_mg / 0.5)
    energies, alphas = np.array(energies), np.array(alphas)
    out = {}
    for t in TEMPERATURES:
        w = np.exp(-(energies - energies.min()) / (swap.K_B * t))
        w /= w.sum()
        out[t] = (float(w @ energies), float(w @ alphas))
    return out


def sample(seed=0, replicas=24, sweeps=160, burn=40, exchange=False):
    atoms, sites = cell()
    rng = np.random.default_rng(seed)
    starts = []
    for _ in range(replicas):
        start = atoms.copy()
        start.numbers[sites] = rng.permutation(atoms.numbers[sites])
        starts.append(start)
    result = anneal_module.anneal(starts, model(), TEMPERATURES, sweeps, seed=seed, exchange=exchange)
    assert (result.exchanges.sum() > sweeps) == exchange  # exchanges happen (or none without the option)
    assert all(np.array_equal(np.sort(a.numbers), np.sort(atoms.numbers)) for a in result.last)
    mg, co = result.cations.index("Mg"), result.cations.index("Co")
    found = {}
    for t in TEMPERATURES:
        chosen = result.temperature == t
        e = result.trace_energy[burn:, chosen].mean(axis=0)  # per replica: independent chains
        a = result.alpha[burn:, chosen, mg, co].mean(axis=0)
        found[t] = ((e.mean(), e.std(ddof=1) / np.sqrt(len(e))), (a.mean(), a.std(ddof=1) / np.sqrt(len(a))))
    return found


def agrees(found, exact, sigmas=4.0):
    return all(abs(found[t][q][0] - exact[t][q]) <= sigmas * found[t][q][1] + 1e-4 for t in TEMPERATURES for q in (0, 1))


@pytest.mark.parametrize("exchange", [False, True])
def test_swap_mc_matches_exact_boltzmann_averages(exchange):
    exact = exact_averages()
    assert exact[400.0][0] < exact[4000.0][0] and exact[400.0][1] > 0.2  # ordering at low T: the check has something to see
    found = sample(exchange=exchange)
    for t in TEMPERATURES:
        (e, de), (a, da) = found[t]
        assert abs(e - exact[t][0]) <= 4 * de + 1e-4, (t, e, de, exact[t][0])
        assert abs(a - exact[t][1]) <= 4 * da + 1e-4, (t, a, da, exact[t][1])


def test_turned_around_metropolis_is_caught(monkeypatch):
    right = swap.attempt
    monkeypatch.setattr(swap, "attempt", lambda *args, sign=1.0: right(*args, sign=-sign))
    assert not agrees(sample(sweeps=80, burn=20), exact_averages())
