"""The JAX MACE against mace-torch (float64): energies, forces and stress on real and generated frames."""

from __future__ import annotations

import mace  # noqa: F401  -- before e3nn
import numpy as np
import pytest
from conftest import shared_file

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace.check import check_structures
from jaxmat.forcefields.mace.convert import from_torch
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.forcefields.mace_torch import MACETorch
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.testing import build_small_mace
from mace_parity import HEO_NUMBERS, assert_parity as _assert_parity, numbers_of, small_lemat_frames

pytestmark = pytest.mark.usefixtures("x64")


def test_hidden_16x0e_lmax2_first_block_not_residual():
    model = build_small_mace(HEO_NUMBERS, seed=1, hidden_irreps="16x0e", max_ell=2, first_block="RealAgnosticInteractionBlock")
    structures = check_structures(HEO_NUMBERS) + [rocksalt_heo(1, seed=3)]
    differences = _assert_parity(model, structures)
    assert differences["forces"] < 1e-9  # float64 end to end: far below the required tolerance


def test_hidden_32x0e_32x1o_lmax3_corr3_on_lemat_frames():
    frames = small_lemat_frames(3)  # real LeMat-Bulk DFT frames shipped with the package
    numbers = numbers_of(frames)
    model = build_small_mace(numbers, seed=2, hidden_irreps="32x0e+32x1o", max_ell=3, correlation=3, r_max=5.0,
                             avg_num_neighbors=30.0)
    _assert_parity(model, frames + check_structures(numbers))


def test_mace_mp0_medium_shape_random_weights():
    numbers = list(range(1, 90))
    model = build_small_mace(numbers, seed=3, hidden_irreps="128x0e+128x1o", max_ell=3, correlation=3, r_max=6.0,
                             num_bessel=10, avg_num_neighbors=61.96, scale_shift=(0.8, 0.1))
    config, _ = from_torch(model)
    assert len(config["atomic_numbers"]) == 89 and config["r_max"] == 6.0
    _assert_parity(model, [rocksalt_heo(1, seed=4, rattle=0.05)])


def test_shared_model_on_its_training_frames():
    import ase.io
    import torch

    model = torch.load(shared_file("models/mace_heo_chgnet_small.model"), weights_only=False)
    frames = ase.io.read(shared_file("models/chgnet_labelled_rocksalt_heo.xyz"), index=":4")
    _assert_parity(model, frames)


def test_lemat_frames_with_shared_heo_data():
    import ase.io

    frames = [a for a in ase.io.read(shared_file("data/heo/lemat_heo_valid.xyz"), index=":40") if len(a) <= 20][:2]
    numbers = numbers_of(frames)
    model = build_small_mace(numbers, seed=5, hidden_irreps="32x0e+32x1o", max_ell=3, correlation=3, r_max=5.0)
    _assert_parity(model, frames)


def test_batching_and_padding_do_not_change_results():
    model = build_small_mace(HEO_NUMBERS, seed=6, hidden_irreps="16x0e+16x1o", max_ell=2, correlation=2)
    force_field = MACEJax.from_torch(model)
    structures = [rocksalt_heo(1, seed=s) for s in range(3)] + check_structures(HEO_NUMBERS)
    together = force_field(batch_from_atoms(structures), compute_stress=True)
    start = 0
    for i, atoms in enumerate(structures):
        alone = force_field(batch_from_atoms([atoms]), compute_stress=True)
        np.testing.assert_allclose(alone.energy[0], together.energy[i], rtol=0, atol=1e-10)
        np.testing.assert_allclose(alone.forces, together.forces[start:start + len(atoms)], rtol=0, atol=1e-10)
        np.testing.assert_allclose(alone.stress[0], together.stress[i], rtol=0, atol=1e-12)
        start += len(atoms)


def test_forces_are_minus_energy_gradient_and_translation_invariant():
    model = build_small_mace(HEO_NUMBERS, seed=7, hidden_irreps="16x0e+16x1o", max_ell=2)
    force_field = MACEJax.from_torch(model)
    atoms = rocksalt_heo(1, seed=8)
    out = force_field(batch_from_atoms([atoms]))
    step, i = 1e-5, 5
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[i, 1] += sign * step
        energies.append(force_field(batch_from_atoms([moved])).energy[0])
    assert abs(-(energies[0] - energies[1]) / (2 * step) - out.forces[i, 1]) < 1e-6
    shifted = atoms.copy()
    shifted.positions += np.array([0.3, -1.1, 2.0])
    assert abs(force_field(batch_from_atoms([shifted])).energy[0] - out.energy[0]) < 1e-10


def test_converted_directory_round_trip(tmp_path):
    from jaxmat.forcefields.mace import io

    model = build_small_mace(HEO_NUMBERS, seed=9, hidden_irreps="16x0e+16x1o", max_ell=3)
    config, params = from_torch(model)
    io.save(config, params, tmp_path / "converted")
    assert not (tmp_path / "converted.partial").exists()
    batch = batch_from_atoms(check_structures(HEO_NUMBERS))
    direct = MACEJax(config, params)(batch, compute_stress=True)
    reloaded = MACEJax.load(tmp_path / "converted")(batch, compute_stress=True)
    np.testing.assert_array_equal(direct.energy, reloaded.energy)
    np.testing.assert_array_equal(direct.forces, reloaded.forces)
    np.testing.assert_array_equal(direct.stress, reloaded.stress)
    with pytest.raises(FileNotFoundError, match="config.json"):
        MACEJax.load(tmp_path)


def test_unknown_element_is_refused():
    force_field = MACEJax.from_torch(build_small_mace([8, 12], seed=11))
    atoms = rocksalt_heo(1, seed=0)  # has Co, Ni, Cu, Zn
    with pytest.raises(ValueError, match=r"atomic numbers \[27, 28, 29, 30\]"):
        force_field(batch_from_atoms([atoms]))


def test_relax_cli_jax_and_torch_backends_agree(tmp_path):
    import ase.io
    import torch

    from jaxmat.relax.__main__ import main

    model_path = tmp_path / "small.model"
    torch.save(build_small_mace(HEO_NUMBERS, seed=12, hidden_irreps="16x0e+16x1o", max_ell=2), model_path)
    ase.io.write(tmp_path / "in.extxyz", [rocksalt_heo(1, seed=s, rattle=0.05) for s in range(3)])
    outputs = {}
    for backend in ("torch", "jax"):
        out = tmp_path / f"{backend}.extxyz"
        assert main([str(tmp_path / "in.extxyz"), "--model", str(model_path), "--out", str(out), "--backend", backend,
                     "--optimizer", "fire", "--fmax", "0.05", "--max-steps", "100"]) == 0
        outputs[backend] = ase.io.read(out, index=":")
    for a, b in zip(outputs["torch"], outputs["jax"]):
        assert a.info["status"] == b.info["status"] == "converged"
        assert a.info["n_steps"] == b.info["n_steps"]
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-6)
        assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-6


def test_torch_bridge_and_jax_share_the_interface():
    model = build_small_mace(HEO_NUMBERS, seed=13)
    batch = batch_from_atoms([rocksalt_heo(1, seed=1)])
    jax_ff, torch_ff = MACEJax.from_torch(model), MACETorch(model)
    assert jax_ff.supported_numbers == torch_ff.supported_numbers
    assert jax_ff(batch).forces.shape == torch_ff(batch).forces.shape == (8, 3)


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_float32_matmul_precision_is_chosen_by_the_force_field(precision):
    """XLA multiplies float32 matrices in TensorFloat-32 on NVIDIA GPUs unless told otherwise (measured on an
    H200: 1e-3 eV/atom, 0.1 eV/Å off mace-torch); the force field traces its program at its own precision."""
    import re

    import jax

    force_field = MACEJax.from_torch(build_small_mace([8, 12, 27, 28, 29, 30], hidden_irreps="8x0e+8x1o"), dtype="float32",
                                     matmul_precision=precision)
    inputs = force_field.padded_inputs(batch_from_atoms([rocksalt_heo(1, seed=0)]))
    seen, evaluate = [], force_field._evaluate

    def spy(*args, **kwargs):
        seen.append(jax.config.jax_default_matmul_precision)
        return evaluate(*args, **kwargs)

    force_field._evaluate = spy
    force_field(batch_from_atoms([rocksalt_heo(1, seed=0)]))
    assert seen == [precision]
    with jax.default_matmul_precision(precision):
        text = evaluate.lower(force_field.params, **inputs).as_text()
    dots = re.findall(r"stablehlo\.dot_general[^\n]*", text)
    assert dots and all(f"precision = [{precision.upper()}, {precision.upper()}]" in d for d in dots)


def test_matmul_precision_is_checked():
    with pytest.raises(ValueError, match="matmul_precision"):
        MACEJax.from_torch(build_small_mace([8, 12]), matmul_precision="tf32")


def test_float32_after_float64_from_one_config():
    """A float64 MACEJax called first, then a float32 one built from the same config (one process, e.g. a user
    comparing precisions): the product basis's cached index tables must not carry float64-scope int64 into
    the float32 program (it raised a dtype TypeError inside JAX)."""
    import jax

    config, params = from_torch(build_small_mace([8, 12, 27, 28, 29, 30], hidden_irreps="8x0e+8x1o"))
    batch = batch_from_atoms([rocksalt_heo(1, seed=3, rattle=0.1)])
    with jax.enable_x64(False):  # as in a user's process: only the float64 force field turns float64 on, in its scope
        exact, fast = MACEJax(config, params, dtype="float64"), MACEJax(config, params, dtype="float32")
        energy64, energy32 = exact(batch).energy, fast(batch).energy
    np.testing.assert_allclose(energy32, energy64, atol=1e-4)
