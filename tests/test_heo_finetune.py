"""HEO finetuning pieces: CHGNet labels, element coverage of the base set, mace_run_train options, refusals."""

from __future__ import annotations

import mace  # noqa: F401  -- before e3nn
import numpy as np
import pytest

from jaxmat.errors import JaxmatInputError
from jaxmat.heo.config import resolve_finetune_config as resolve_config
from jaxmat.heo.finetune import base_structures, covering_subset, mace_options


@pytest.fixture(scope="module")
def lemat_frames():
    import ase.io

    from jaxmat.resources import resource_path

    return ase.io.read(resource_path("lemat_heo_valid.xyz.gz"), index=":40")


@pytest.fixture(scope="module")
def chgnet():
    from jaxmat.forcefields.chgnet import CHGNetForceField

    return CHGNetForceField()


def test_chgnet_forces_are_the_energy_gradient(chgnet):
    from jaxmat.forcefields.base import batch_from_atoms
    from jaxmat.heo.generate import rocksalt_heo

    atoms = rocksalt_heo(1, seed=3, rattle=0.1)
    out = chgnet(batch_from_atoms([atoms]))
    step = 0.01
    for atom, axis in ((0, 0), (3, 2), (5, 1)):
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            energies.append(chgnet(batch_from_atoms([moved])).energy[0])
        numeric = -(energies[0] - energies[1]) / (2 * step)
        assert abs(numeric - out.forces[atom, axis]) < 0.03 + 0.02 * abs(numeric)  # CHGNet runs in float32


def test_raw_chgnet_energies_sit_on_the_lemat_dft_scale(chgnet, lemat_frames):
    """The MP2020 corrections removed, CHGNet lands within tens of meV/atom of LeMat-Bulk DFT; corrected it does not."""
    from jaxmat.forcefields.base import batch_from_atoms
    from jaxmat.forcefields.chgnet import CHGNetForceField

    frames = lemat_frames[:12]
    n_atoms = np.array([len(a) for a in frames])
    dft = np.array([a.info["DFT_energy"] for a in frames]) / n_atoms
    raw = chgnet(batch_from_atoms(frames)).energy / n_atoms
    corrected = CHGNetForceField(chgnet.model, corrected=True)(batch_from_atoms(frames)).energy / n_atoms
    assert np.median(np.abs(raw - dft)) < 0.05
    assert np.median(np.abs(corrected - dft)) > 0.2
    assert np.all(corrected <= raw + 1e-9)  # MP2020 corrections only lower oxide energies


def test_covering_subset_covers_every_element(lemat_frames):
    chosen = covering_subset(lemat_frames, 5, seed=0)
    everything = {s for a in lemat_frames for s in a.get_chemical_symbols()}
    assert {s for i in chosen for s in lemat_frames[i].get_chemical_symbols()} == everything
    assert len(set(chosen)) == len(chosen)
    assert chosen == covering_subset(lemat_frames, 5, seed=0)
    assert len(covering_subset(lemat_frames, 35, seed=0)) == 35


def test_base_structures_are_rattled_copies_and_rocksalt_cells(lemat_frames):
    config = resolve_config({})
    base = {**config["base"], "curated_structures": 4, "copies": 2, "rocksalt_cells": 3, "rattle": [0.05, 0.05]}
    structures = base_structures(lemat_frames, base, seed=1)
    curated = [a for a in structures if a.info["origin"].startswith("curated")]
    rocksalt = [a for a in structures if a.info["origin"] == "rocksalt"]
    assert len(rocksalt) == 3 and len(curated) == 2 * len(covering_subset(lemat_frames, 4, seed=1))
    assert all(set(a.get_chemical_symbols()) <= {"Mg", "Co", "Ni", "Cu", "Zn", "O"} for a in rocksalt)
    assert all("DFT_forces" not in a.arrays and "DFT_energy" not in a.info for a in structures)
    assert [len(a) for a in rocksalt] == [8, 16, 32]


def test_finetune_options_are_the_reference_settings(tmp_path):
    config = resolve_config({"foundation": {"model": "medium"}})
    paths = {"work": tmp_path / "w", "foundation": "medium", "train": tmp_path / "train.extxyz",
             "valid": tmp_path / "val.extxyz", "test": tmp_path / "test.extxyz"}
    options = mace_options("finetune", config, paths)
    expected = {"foundation_model": "medium", "energy_key": "DFT_energy", "forces_key": "DFT_forces", "default_dtype": "float64",
                "energy_weight": 1.0, "forces_weight": 10.0, "lr": 1e-4, "batch_size": 5, "max_num_epochs": 10,
                "E0s": "foundation", "scaling": "rms_forces_scaling", "restart_latest": True}
    assert {k: options[k] for k in expected} == expected
    base = mace_options("base", config, {"work": tmp_path / "b", "train": tmp_path / "base.extxyz"})
    assert base["energy_key"] == "REF_energy" and base["E0s"] == "average" and "foundation_model" not in base


def test_unknown_config_keys_are_refused():
    from jaxmat.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs"):
        resolve_config({"finetune": {"mace": {}, "epochs": 3}})


def test_foundation_lacking_an_element_is_refused(tmp_path, lemat_frames):
    import ase.io
    import torch

    from jaxmat.heo.finetune import finetune
    from jaxmat.testing import build_small_mace

    data = tmp_path / "curated"
    data.mkdir()
    for name, frames in (("train", lemat_frames[:6]), ("val", lemat_frames[6:8]), ("test", lemat_frames[8:10])):
        ase.io.write(data / f"{name}.extxyz", frames, format="extxyz")
    numbers = sorted({int(z) for a in lemat_frames[:8] for z in a.numbers})
    model_path = tmp_path / "foundation.model"
    torch.save(build_small_mace([z for z in numbers if z != 8]), model_path)  # no oxygen
    with pytest.raises(JaxmatInputError, match=r"lacks element.*'O': 8"):
        finetune({"out": str(tmp_path / "out"), "data": {"dir": str(data)}, "foundation": {"model": str(model_path)}})
    with pytest.raises(JaxmatInputError, match="curate"):
        finetune({"out": str(tmp_path / "out"), "data": {"dir": str(tmp_path / "nowhere")}})


def test_model_finetuned_from_a_current_foundation_shape_runs_in_jax(tmp_path, lemat_frames):
    """A foundation file of the MPA-0 shape (density blocks, ZBL, Agnesi; random weights, few channels) finetuned by
    mace_run_train keeps those options, and the finetuned model loads in the JAX MACE with mace-torch's numbers."""
    import ase.io
    import torch

    from jaxmat.forcefields.mace.check import compare_with_torch
    from jaxmat.forcefields.mace.forcefield import MACEJax
    from jaxmat.heo.finetune import finetune
    from jaxmat.testing import build_small_mace, family_shape

    data = tmp_path / "curated"
    data.mkdir()
    for name, frames in (("train", lemat_frames[:6]), ("val", lemat_frames[6:8]), ("test", lemat_frames[8:10])):
        ase.io.write(data / f"{name}.extxyz", frames, format="extxyz")
    numbers = sorted({int(z) for a in lemat_frames for z in a.numbers})
    foundation = tmp_path / "foundation.model"
    torch.save(build_small_mace(numbers, seed=3, **{**family_shape("mpa-0-medium", channels=4), "r_max": 5.0}), foundation)
    summary = finetune({"out": str(tmp_path / "out"), "data": {"dir": str(data)}, "foundation": {"model": str(foundation)},
                        "finetune": {"mace": {"max_num_epochs": 1, "batch_size": 3}}}, progress=False)
    finetuned = torch.load(summary["models"]["finetuned"], map_location="cpu", weights_only=False)
    assert hasattr(finetuned, "pair_repulsion") and hasattr(finetuned.radial_embedding, "distance_transform")
    import jax

    with jax.enable_x64(True):
        differences = compare_with_torch(finetuned.double(), MACEJax.from_torch(finetuned), lemat_frames[10:12])
    assert differences["energy_per_atom"] < 1e-6 and differences["forces"] < 1e-5 and differences["stress"] < 1e-6, differences
