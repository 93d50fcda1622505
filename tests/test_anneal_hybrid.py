"""Hybrid swap MC / Langevin MD (jaxmat.heo.hybrid): compositions and anion sites kept while atoms move, the energies
carried are the model's at the reported arrangements and positions, the lowest is the lowest met."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.heo.hybrid import hybrid


@pytest.mark.parametrize("pressure_gpa", [None, 2.0])
def test_hybrid_moves_atoms_keeps_compositions_and_carries_the_model_energy(pressure_gpa):
    model = lennard_jones(sigma=2.0, epsilon=0.01, cutoff=5.0)  # eV, Å; species-blind, but forces move the atoms
    cells = [rocksalt_heo(2, seed=s, mode="equimolar") for s in range(2)]
    result = hybrid(cells, model, [300.0, 1500.0], 3, 10, seed=0, timestep_fs=2.0, pressure_gpa=pressure_gpa, taup_fs=50.0)
    volumes = np.array([a.get_volume() for a in result.last])
    if pressure_gpa is None:
        np.testing.assert_allclose(volumes, cells[0].get_volume())
    else:  # at constant pressure the cells follow it (the energies below are the model's in those cells)
        assert np.all(np.abs(volumes / cells[0].get_volume() - 1) > 1e-3)
    for r, (last, best) in enumerate(zip(result.last, result.best)):
        start = cells[result.input_index[r]]
        assert np.array_equal(np.sort(last.numbers), np.sort(start.numbers))
        assert np.array_equal(last.numbers == 8, start.numbers == 8)
        assert np.max(np.abs(last.positions - start.positions)) > 1e-3  # MD moved them
    np.testing.assert_allclose(result.energy, model(batch_from_atoms(result.last)).energy, atol=1e-5)
    np.testing.assert_allclose(result.best_energy, model(batch_from_atoms(result.best)).energy, atol=1e-5)
    assert result.trace_energy.shape == (3, 4)
    assert np.all(result.best_energy <= result.trace_energy.min(axis=0) + 1e-9)
    assert np.all(result.acceptance == 1.0)  # a species-blind energy accepts every swap
