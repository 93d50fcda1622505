"""Relaxed swaps (jaxmat.heo.relaxed): every energy carried is the model's at the reported arrangement and relaxed
geometry, relaxations lower it from the unrelaxed start, compositions and anion sites are kept."""

from __future__ import annotations

import numpy as np

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.heo.relaxed import relaxed_anneal


def test_relaxed_swaps_carry_the_model_energy_of_relaxed_geometries():
    model = lennard_jones(sigma=2.0, epsilon=0.01, cutoff=5.0)  # species-blind: every swap is accepted
    cells = [rocksalt_heo(1, seed=s, mode="equimolar", rattle=0.1) for s in range(2)]
    result = relaxed_anneal(cells, model, [300.0, 1500.0], 2, relax_steps=4, seed=1)
    for last, best, r in zip(result.last, result.best, range(len(result.last))):
        start = cells[result.input_index[r]]
        assert np.array_equal(np.sort(last.numbers), np.sort(start.numbers)) and np.array_equal(last.numbers == 8, start.numbers == 8)
        assert np.max(np.abs(last.positions - start.positions)) > 1e-3
    np.testing.assert_allclose(result.energy, model(batch_from_atoms(result.last)).energy, atol=1e-5)
    np.testing.assert_allclose(result.best_energy, model(batch_from_atoms(result.best)).energy, atol=1e-5)
    unrelaxed = np.repeat(model(batch_from_atoms(cells)).energy, 2)
    assert np.all(result.best_energy < unrelaxed)
    assert np.all(result.acceptance == 1.0) and result.trace_energy.shape == (2, 4) and result.alpha.shape[:2] == (2, 4)
