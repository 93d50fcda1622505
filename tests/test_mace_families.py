"""The JAX MACE against mace-torch on every MACE foundation family's architecture and every model option of
mace-torch 0.3.16 (random weights, channels scaled down, every option kept): energies, forces, stress, heads,
and the device loop against the host loop."""

from __future__ import annotations

import mace  # noqa: F401  -- before e3nn
import numpy as np
import pytest

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace.check import check_structures
from jaxmat.forcefields.mace.convert import UnsupportedMACEError, from_torch
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.testing import build_small_mace, family_shape
from mace_parity import HEO_NUMBERS, assert_parity as _assert_parity, numbers_of, small_lemat_frames

pytestmark = pytest.mark.usefixtures("x64")


def test_mpa0_shape_density_blocks_zbl_agnesi_on_lemat_frames():
    """MACE-MP-0b3 / MPA-0 / OMAT-0: density and density-residual blocks, ZBL repulsion, Agnesi transform."""
    frames = small_lemat_frames(2, max_atoms=16)
    numbers = sorted(set(numbers_of(frames)) | set(HEO_NUMBERS))
    model = build_small_mace(numbers, seed=1, **family_shape("mpa-0-medium", channels=8))
    config, _ = from_torch(model)
    assert config["zbl"] and config["distance_transform"]["kind"] == "agnesi"
    assert [c["normalization"] for c in config["interactions"]] == ["density", "density"]
    close = rocksalt_heo(1, seed=2, rattle=0.05)
    close.set_cell(close.cell[:] * 0.8, scale_atoms=True)  # 1.7 Å bonds: the ZBL envelope is open
    _assert_parity(model, frames + [close])


@pytest.mark.parametrize("head", ["omat_pbe", "matpes_r2scan", "spice_wB97M"])
def test_mh1_shape_every_head(head):
    """MACE-MH-1: residual non-linear blocks, edge irreps (first layer too), agnostic product, no cutoff on the
    basis, non-linear readout with biases, three heads with their own E0s, scale and shift."""
    model = build_small_mace(HEO_NUMBERS, seed=2, **family_shape("mh-1", channels=4))
    _assert_parity(model, check_structures(HEO_NUMBERS), head=head)


OPTIONS = {
    "gaussian-basis": dict(radial_type="gaussian"),
    "chebyshev-basis-agnesi": dict(radial_type="chebyshev", distance_transform="Agnesi"),
    "soft-transform": dict(distance_transform="Soft"),
    "attention-residual-blocks": dict(first_block="RealAgnosticAttResidualInteractionBlock",
                                      block="RealAgnosticAttResidualInteractionBlock", radial_mlp=(8,), scale_shift=(0.01, 0.0)),
    "so3-harmonics": dict(use_so3=True, hidden_irreps="8x0e+8x1e"),
    "last-readout-only": dict(use_last_readout_only=True),
    "keep-last-layer-irreps": dict(keep_last_layer_irreps=True),
    "no-cutoff-on-basis": dict(apply_cutoff=False),
    "full-cg": dict(use_reduced_cg=False),
    "edge-irreps": dict(edge_irreps="4x0e+4x1o", use_edge_irreps_first=True),
    "density-residual-first": dict(first_block="RealAgnosticDensityResidualInteractionBlock",
                                   block="RealAgnosticDensityInteractionBlock"),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_model_option(option):
    settings = {"hidden_irreps": "8x0e+8x1o", "r_max": 4.5, "correlation": 2, **OPTIONS[option]}
    model = build_small_mace(HEO_NUMBERS, seed=3, **settings)
    _assert_parity(model, check_structures(HEO_NUMBERS))


def test_omol0_shape_charge_and_spin_embedding():
    """MACE-OMOL-0: joint embedding of total charge and spin (from atoms.info, as mace-torch's calculator reads
    them) with its energy readout, 3 layers, L=2."""
    model = build_small_mace(HEO_NUMBERS, seed=4, **family_shape("omol-0", channels=4))
    structures = check_structures(HEO_NUMBERS) + [rocksalt_heo(1, seed=5)]
    for atoms, (charge, spin) in zip(structures, [(0, 1), (-2, 3), (1.5, 2)]):
        atoms.info.update(charge=charge, spin=spin)
    _assert_parity(model, structures)
    charged = [a.copy() for a in structures[:1]]
    charged[0].info.update(charge=3, spin=2)
    assert abs(_energy(model, charged) - _energy(model, structures[:1])) > 1e-4  # the embedding counts


def _energy(model, structures):
    return MACEJax.from_torch(model)(batch_from_atoms(structures)).energy[0]


def test_options_still_refused_are_named():
    model = build_small_mace(HEO_NUMBERS, seed=4, embedding_specs={
        "magmom": {"type": "continuous", "in_dim": 1, "emb_dim": 4, "per": "node"}})
    with pytest.raises(UnsupportedMACEError, match="embedding_specs feature: magmom"):
        from_torch(model)


def test_radial_table_refuses_element_dependent_radial_weights():
    from jaxmat.forcefields.mace.model import with_radial_table

    config, params = from_torch(build_small_mace(HEO_NUMBERS, seed=5, distance_transform="Agnesi"))
    with pytest.raises(ValueError, match="distance transform"):
        with_radial_table(params, config)


def test_converting_leaves_the_callers_model_as_it_was():
    import torch

    model = build_small_mace(HEO_NUMBERS, seed=6).float()
    from_torch(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("family", ["mpa-0-medium", "mh-1"])
def test_device_loop_equals_host_loop(family):
    from jaxmat.relax import relax

    model = build_small_mace(HEO_NUMBERS, seed=7, scale_shift=(5.0, 0.0), **{**family_shape(family, channels=4), "r_max": 4.5})
    force_field = MACEJax.from_torch(model, head=model.heads[0])
    cells = [rocksalt_heo(1, seed=s, rattle=0.1) for s in range(3)]
    host = relax(cells, force_field, optimizer="lbfgs", fmax=0.01, max_steps=8, progress=False, loop="host")
    device = relax(cells, force_field, optimizer="lbfgs", fmax=0.01, max_steps=8, progress=False, loop="device",
                   max_systems=2)
    assert [r.n_steps for r in device] == [r.n_steps for r in host]
    assert [r.status for r in device] == [r.status for r in host]
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-8)
        assert a.energy == pytest.approx(b.energy, abs=1e-8)
    assert max(np.abs(r.atoms.positions - c.positions).max() for r, c in zip(host, cells)) > 1e-3, [r.n_steps for r in host]


def test_convert_script_checks_every_head(tmp_path):
    import importlib.util

    import torch

    from conftest import REPO

    model_path = tmp_path / "mh1.model"
    torch.save(build_small_mace(HEO_NUMBERS, seed=8, **family_shape("mh-1", channels=4)), model_path)
    spec = importlib.util.spec_from_file_location("convert_mace", REPO / "scripts" / "convert_mace.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(model_path), str(tmp_path / "converted")]) == 0
    reloaded = MACEJax.load(tmp_path / "converted", head="spice_wB97M")
    assert reloaded.heads == ["omat_pbe", "matpes_r2scan", "spice_wB97M"] and reloaded.head_index == 2


def test_hessian_equals_finite_differences_of_forces():
    model = build_small_mace(HEO_NUMBERS, seed=9, **{**family_shape("mpa-0-medium", channels=4), "r_max": 4.5})
    force_field = MACEJax.from_torch(model)
    atoms = check_structures(HEO_NUMBERS)[1]  # 2 atoms, triclinic
    hessian = force_field.hessian(atoms)
    n = len(atoms)
    assert hessian.shape == (n, 3, n, 3)
    np.testing.assert_allclose(hessian.reshape(3 * n, 3 * n), hessian.reshape(3 * n, 3 * n).T, atol=1e-9)
    step = 1e-4
    for i in range(n):
        for a in range(3):
            forces = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * step
                forces.append(force_field(batch_from_atoms([moved])).forces)
            np.testing.assert_allclose(hessian[:, :, i, a], -(forces[0] - forces[1]) / (2 * step), atol=1e-6)


def test_model_caches_are_bounded():
    from jaxmat.forcefields.mace import ops, product_basis
    from jaxmat.forcefields.mace.memo import IdentityMemo

    built = []
    memo = IdentityMemo(size=3)
    configs = [{"layer": i} for i in range(5)]
    for config in configs + configs[-1:]:
        memo.get(lambda c: built.append(c) or len(built), config)
    assert len(memo) == 3 and len(built) == 5  # the last one was served from the table
    assert memo.get(lambda c: -1, configs[-1]) == 5
    assert isinstance(ops._CONVOLUTION_FNS, IdentityMemo) and isinstance(product_basis._CONTRACTION_FNS, IdentityMemo)


def test_device_loop_follows_a_changed_force_field_setting():
    """A compiled loop traced with one matmul precision is not reused after the force field's setting changed."""
    from jaxmat.relax import relax

    force_field = MACEJax.from_torch(build_small_mace(HEO_NUMBERS, seed=10, hidden_irreps="4x0e+4x1o", r_max=4.0),
                                     dtype="float32")
    cells = [rocksalt_heo(1, seed=1)]
    first = relax(cells, force_field, optimizer="fire", max_steps=2, progress=False, loop="device").stats
    again = relax(cells, force_field, optimizer="fire", max_steps=2, progress=False, loop="device").stats
    force_field.matmul_precision = "default"
    changed = relax(cells, force_field, optimizer="fire", max_steps=2, progress=False, loop="device").stats
    assert first["compilations"] >= 1 and again["compilations"] == 0 and changed["compilations"] >= 1
