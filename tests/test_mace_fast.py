"""Optional accelerations of the JAX MACE (off by default) against the exact JAX MACE (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import mace  # noqa: F401  -- before e3nn

from conftest import shared_file
from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace import model
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.heo.generate import rocksalt_heo

pytestmark = pytest.mark.usefixtures("x64")

TOLERANCE = {"energy_per_atom": 1e-6, "forces": 1e-5, "stress": 1e-6}  # eV/atom, eV/Å, eV/Å^3: the parity tests' limits


def _evaluate(force_field, params, structures):
    batch = batch_from_atoms(structures)
    inputs = force_field.padded_inputs(batch)
    n_systems = inputs.pop("n_systems")
    energy, forces, stress = model.energy_forces_stress(params, force_field.config, **inputs, n_systems=n_systems,
                                                        head=force_field.head_index)
    n = len(batch.numbers)
    return (np.asarray(energy)[:batch.n_systems] / np.bincount(batch.system_index), np.asarray(forces)[:n],
            np.asarray(stress)[:batch.n_systems])


def _differences(step):
    force_field = MACEJax.from_torch(shared_file("models/mace_heo_chgnet_small.model"))
    structures = [rocksalt_heo(2, seed=s, rattle=0.1) for s in range(2)] + [rocksalt_heo(1, seed=5, rattle=0.2)]
    tabulated, max_error = model.with_radial_table(force_field.params, force_field.config, step=step)
    exact = _evaluate(force_field, force_field.params, structures)
    approx = _evaluate(force_field, tabulated, structures)
    return max_error, dict(zip(TOLERANCE, (float(np.abs(a - b).max()) for a, b in zip(exact, approx))))


def test_radial_table_matches_the_exact_model():
    max_error, differences = _differences(step=1e-3)
    assert max_error < 1e-9, max_error  # checked bound on every tabulated weight (the MLP is element-independent)
    for key, limit in TOLERANCE.items():
        assert differences[key] < limit, (key, differences)


def test_coarse_radial_table_shows_in_its_error_bound():
    max_error, differences = _differences(step=0.25)
    assert max_error > 1e-6, max_error  # the bound reports a grid that is too coarse ...
    assert differences["forces"] > 1e-6, differences  # ... and the forces move with it
