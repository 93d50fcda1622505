"""The MACE bridge evaluates a whole batch in one call and matches MACECalculator per structure."""

import mace  # noqa: F401  (import before e3nn)
import numpy as np
import pytest
from ase.build import bulk
from conftest import shared_file

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace_torch import MACETorch
from jaxmat.heo.generate import rocksalt_heo


@pytest.fixture(scope="module")
def small_mace_file(tmp_path_factory):
    """A small ScaleShiftMACE with random weights, saved like a trained model file."""
    import torch

    from jaxmat.testing import build_small_mace

    path = tmp_path_factory.mktemp("mace") / "small.model"
    torch.save(build_small_mace([8, 12, 27, 28, 29, 30]), path)
    return path


def assert_matches_calculator(model_path, structures):
    from mace.calculators import MACECalculator

    bridge = MACETorch(model_path)
    out = bridge(batch_from_atoms(structures), compute_stress=True)
    calculator = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    offset = 0
    for i, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = calculator
        assert out.energy[i] == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(out.forces[offset : offset + len(atoms)], atoms.get_forces(), atol=1e-8)
        np.testing.assert_allclose(out.stress[i], atoms.get_stress(voigt=False), atol=1e-8)
        offset += len(atoms)


def test_bridge_matches_calculator_on_generated_heo_cells(small_mace_file):
    structures = [rocksalt_heo((1, 1, 1), seed=0), rocksalt_heo((2, 1, 1), seed=1), rocksalt_heo((2, 2, 1), seed=2)]
    assert_matches_calculator(small_mace_file, structures)


def test_bridge_matches_calculator_with_the_shared_model():
    import ase.io

    model = shared_file("models/mace_heo_chgnet_small.model")
    frames = ase.io.read(shared_file("models/chgnet_labelled_rocksalt_heo.xyz"), index=":6")
    assert_matches_calculator(model, frames)


def test_mace_relaxation_batch_equals_one_by_one(small_mace_file):
    from jaxmat.relax import relax

    bridge = MACETorch(small_mace_file)
    structures = [rocksalt_heo((1, 1, 1), seed=3), rocksalt_heo((2, 1, 1), seed=4)]
    batched = relax(structures, bridge, optimizer="lbfgs", fmax=0.05, max_steps=60, progress=False)
    for s, b in zip(structures, batched):
        [alone] = relax([s], bridge, optimizer="lbfgs", fmax=0.05, max_steps=60, progress=False)
        assert b.n_steps == alone.n_steps and b.status == alone.status
        np.testing.assert_allclose(b.atoms.positions, alone.atoms.positions, atol=1e-9)


def test_unsupported_element_named(small_mace_file):
    from jaxmat.errors import JaxmatInputError
    from jaxmat.relax import relax

    bad = bulk("NaCl", "rocksalt", a=5.6)
    with pytest.raises(JaxmatInputError, match="structure 1 .*contains Na, Cl|structure 1 .*contains Cl, Na"):
        relax([rocksalt_heo((1, 1, 1), seed=0), bad], MACETorch(small_mace_file), progress=False)


def test_cli_on_embedded_heo_frames_with_a_small_mace(tmp_path, x64):
    """The documented script builds a MACE for every element of the embedded HEO frames; the CLI relaxes them."""
    import sys
    from pathlib import Path

    import ase.io

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_small_mace import main as make_model

    from jaxmat.data.sources import load_structures
    from jaxmat.data.structures import to_ase
    from jaxmat.relax.__main__ import main

    model = tmp_path / "heo_small.model"
    assert make_model([str(model), "--from-embedded-heo"]) == 0
    frames = [to_ase(r) for r in load_structures("embedded:heo").records]
    small = [f for f in frames if len(f) <= 10][:6]
    source = tmp_path / "heo.extxyz"
    ase.io.write(source, small)
    out = tmp_path / "relaxed.extxyz"
    assert main([str(source), "--model", str(model), "--out", str(out), "--optimizer", "lbfgs", "--max-steps", "3", "--no-progress"]) == 0
    relaxed = ase.io.read(out, index=":")
    assert len(relaxed) == len(small)
    for frame, original in zip(relaxed, small):
        assert frame.info["status"] in ("converged", "max_steps") and frame.info["n_steps"] <= 3
        assert np.isfinite(frame.get_potential_energy()) and frame.get_forces().shape == (len(original), 3)
    # the whole embedded set by name, evaluation only
    assert main(["embedded:heo", "--model", str(model), "--out", str(tmp_path / "all.extxyz"), "--max-steps", "0", "--no-progress"]) == 0
    assert len(ase.io.read(tmp_path / "all.extxyz", index=":")) == 1292
