"""MACEJax(dtype="mixed"), an optional acceleration (off by default): float32 params and model operations,
float64 positions, edge-vector subtraction, per-system sums, E0s and gradient sums, against the exact float64
JAX MACE. No x64 fixture: like dtype="float64", the force field turns float64 on in its own scope."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mace  # noqa: F401  -- before e3nn

from conftest import shared_file
from jaxmat.errors import JaxmatInputError
from jaxmat.forcefields.base import ForceFieldOutput, batch_from_atoms
from jaxmat.forcefields.mace import model
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.forcefields.mace.ops import outgoing_slots
from jaxmat.forcefields.neighbors import neighbor_matrix
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.precision import float64_scope

MODEL = "models/mace_heo_chgnet_small.model"
# eV/atom, eV/Å, eV/Å^3: float32-level limits, ~10x the largest mixed-vs-float64 differences measured on these
# structures (5.6e-7, 4.5e-6, 2.0e-7; pure float32: 6.5e-7, 8.2e-6, 4.2e-7)
TOLERANCE = {"energy_per_atom": 5e-6, "forces": 5e-5, "stress": 2e-6}


@pytest.fixture(scope="module")
def force_fields():
    from jaxmat.forcefields.mace.convert import from_torch

    config, params = from_torch(shared_file(MODEL))
    return {dtype: MACEJax(config, params, dtype=dtype) for dtype in ("float64", "mixed")}


@pytest.fixture(scope="module")
def structures():
    return [rocksalt_heo(2, seed=seed, rattle=0.1) for seed in (0, 1)] + [rocksalt_heo(1, seed=5, rattle=0.2)]


def _differences(output, reference, n_atoms):
    return {"energy_per_atom": float(np.abs((output.energy - reference.energy) / n_atoms).max()),
            "forces": float(np.abs(output.forces - reference.forces).max()),
            "stress": float(np.abs(output.stress - reference.stress).max())}


def test_mixed_matches_float64_to_float32_level(force_fields, structures):
    batch = batch_from_atoms(structures)
    n_atoms = np.bincount(batch.system_index)
    exact = force_fields["float64"](batch, compute_stress=True)
    differences = _differences(force_fields["mixed"](batch, compute_stress=True), exact, n_atoms)
    for key, limit in TOLERANCE.items():
        assert differences[key] < limit, (key, differences)
    assert differences["forces"] > 1e-9, differences  # the model really ran in float32
    # 1000 Å from the origin: the float64 subtraction loses nothing (pure float32 positions lose ~6e-5 Å each:
    # measured 1.0e-3 eV/Å off there, 20x the force limit)
    far = [atoms.copy() for atoms in structures]
    for atoms in far:
        atoms.positions += 1000.0
    far_mixed = _differences(force_fields["mixed"](batch_from_atoms(far), compute_stress=True), exact, n_atoms)
    for key, limit in TOLERANCE.items():
        assert far_mixed[key] < limit, (key, far_mixed)


def test_model_runs_in_float32_on_float64_geometry(force_fields, structures):
    force_field = force_fields["mixed"]
    assert {a.dtype for a in jax.tree_util.tree_leaves(force_field.params)} == {jnp.dtype(jnp.float32)}
    inputs = force_field.padded_inputs(batch_from_atoms(structures[2:]))
    assert inputs["positions"].dtype == inputs["cells"].dtype == inputs["shifts"].dtype == jnp.float64
    vectors = jnp.zeros(inputs["neighbors"].shape + (3,), jnp.float32)

    def model_energies(params, vectors):
        return model.node_energies(params, force_field.config, inputs["species"], vectors, inputs["neighbors"],
                                   inputs["neighbor_mask"], force_field.head_index, inputs["outgoing_slots"])

    def backward(params, vectors):
        node, pullback = jax.vjp(lambda v: model_energies(params, v), vectors)
        return node, pullback(jnp.ones_like(node))

    with float64_scope(True):
        program = str(jax.make_jaxpr(backward)(force_field.params, vectors))
    # every model array, forward and backward, is float32 even in a float64 scope (scalar literals aside)
    assert re.search(r"f64\[\d", program) is None, [line for line in program.splitlines() if "f64[" in line][:5]


def test_node_energies_are_summed_in_float64_also_in_the_device_loop(force_fields, structures, monkeypatch):
    """The device loop's entry (MACEJax.device_model) on three systems: float32 node energies, caught as the
    compiled program makes them, summed per system in float64 with the E0s; float64 outputs."""
    force_field = force_fields["mixed"]
    caught, node_energies = [], model.node_energies

    def spy(*args, **kwargs):
        node = node_energies(*args, **kwargs)
        jax.debug.callback(lambda node: caught.append(np.asarray(node)), node)
        return node

    monkeypatch.setattr(model, "node_energies", spy)  # traced below, in a program of its own
    params, evaluate = force_field.device_model()
    assert params is force_field.params
    batch = batch_from_atoms(structures)
    n = len(batch.numbers)
    matrix = neighbor_matrix(batch, force_field.r_max, n + 1)
    species = np.append(force_field.device_species(batch.numbers), 0).astype(np.int32)
    system_index = np.append(batch.system_index, batch.n_systems).astype(np.int32)  # padding row: its own system
    with float64_scope(True):
        graph = {"positions": jnp.asarray(np.concatenate([batch.positions, np.zeros((1, 3))])),
                 "cells": jnp.asarray(np.concatenate([batch.cells, np.eye(3)[None]])),
                 "species": jnp.asarray(species), "system_index": jnp.asarray(system_index),
                 "neighbors": jnp.asarray(matrix.neighbors), "translations": jnp.asarray(matrix.translations),
                 "mask": jnp.asarray(matrix.mask), "outgoing": jnp.asarray(outgoing_slots(matrix.neighbors, matrix.mask))}
        energy, forces, stress = jax.block_until_ready(jax.jit(evaluate)(params, graph))
    assert energy.dtype == forces.dtype == stress.dtype == jnp.float64
    assert len(caught) == 1 and caught[0].dtype == np.float32
    e0 = np.asarray(force_field.config["atomic_energies"], np.float64)[force_field.head_index][species]
    expected = np.bincount(system_index, weights=caught[0].astype(np.float64) + e0)
    np.testing.assert_allclose(np.asarray(energy), expected, rtol=1e-12, atol=0)
    exact = force_fields["float64"](batch, compute_stress=True)
    differences = _differences(ForceFieldOutput(np.asarray(energy)[:-1], np.asarray(forces)[:n], np.asarray(stress)[:-1]),
                               exact, np.bincount(batch.system_index))
    for key, limit in TOLERANCE.items():
        assert differences[key] < limit, (key, differences)


def test_dtype_names_are_checked(force_fields):
    force_field = force_fields["float64"]
    with pytest.raises(ValueError, match="float64, float32, mixed"):
        MACEJax(force_field.config, force_field.params, dtype="float16")


def test_mace_torch_refuses_mixed():
    from jaxmat.forcefields.registry import load_force_field

    with pytest.raises(JaxmatInputError, match="backend jax"):
        load_force_field(str(shared_file(MODEL)), backend="torch", dtype="mixed")


def test_relax_cli_refuses_mixed_with_mace_torch(tmp_path, capsys, x64):
    import ase.io

    from jaxmat.relax.__main__ import main

    ase.io.write(tmp_path / "in.extxyz", [rocksalt_heo(1, seed=0)])
    code = main([str(tmp_path / "in.extxyz"), "--model", str(shared_file(MODEL)), "--out", str(tmp_path / "out.extxyz"),
                 "--backend", "torch", "--dtype", "mixed", "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "--backend jax" in error, error
    assert not (tmp_path / "out.extxyz").exists()
