"""Every data source yields the same records; bad entries are skipped and counted."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from jaxmat.data.sources import load_structures, mp_docs_to_factories
from jaxmat.data.structures import to_ase, to_pymatgen
from jaxmat.errors import JaxmatInputError
from jaxmat.polysrl.dataset import build_dataset


@pytest.fixture(scope="module")
def heo_records():
    return load_structures("embedded:heo", limit=12).records


def test_embedded_sources():
    mp = load_structures("embedded:mp")
    heo = load_structures("embedded:heo")
    assert len(mp.records) == 1265 and len(heo.records) == 1292
    assert not mp.skipped and not heo.skipped
    assert mp.records[0].formula == "BaTe"
    assert all(len(set(r.numbers.tolist())) >= 5 and 8 in r.numbers for r in heo.records)


def test_extxyz_with_bad_frames_skips_and_counts(tmp_path, heo_records):
    good = [to_ase(r) for r in heo_records[:3]]
    nan = good[0].copy()
    nan.positions[2, 1] = np.nan
    overlapping = bulk("MgO", "rocksalt", a=4.2) * (2, 1, 1)
    overlapping.positions[1] = overlapping.positions[0] + [0.05, 0, 0]
    path = tmp_path / "frames.extxyz"
    write(path, good + [nan, overlapping], format="extxyz")
    report = load_structures("file", path)
    assert len(report.records) == 4 and len(report.skipped) == 1
    assert "non-finite" in report.skipped[0][1]
    dataset = build_dataset({"source": "file", "path": str(path), "limit": None, "cutoff": 8.0, "max_neighbors": 12})
    assert len(dataset) == 3 and len(dataset.skipped) == 2
    assert any("overlap" in reason for _, reason in dataset.skipped)


def test_cif_folder_and_pymatgen_json(tmp_path, heo_records):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for r in heo_records[:4]:
        to_pymatgen(r).to(filename=str(folder / f"{r.id.replace(':', '_')}.cif"))
    cif = load_structures("file", folder)
    assert sorted(r.formula for r in cif.records) == sorted(r.formula for r in heo_records[:4])
    js = tmp_path / "structures.json"
    js.write_text(json.dumps([to_pymatgen(r).as_dict() for r in heo_records[:5]]))
    loaded = load_structures("file", js).records
    assert [r.formula for r in loaded] == [r.formula for r in heo_records[:5]]
    np.testing.assert_allclose(loaded[1].positions, heo_records[1].positions, atol=1e-8)


def lemat_table(records):
    """A LeMat-Bulk-schema parquet table (the columns the loader reads, plus some it ignores)."""
    from jaxmat.data.elements import element_symbol

    return pa.table({
        "immutable_id": [f"agm{i:06d}" for i in range(len(records))],
        "chemical_formula_reduced": [r.formula for r in records],
        "lattice_vectors": [r.cell.tolist() for r in records],
        "cartesian_site_positions": [r.positions.tolist() for r in records],
        "species_at_sites": [[element_symbol(z) for z in r.numbers] for r in records],
        "nsites": [len(r.numbers) for r in records],
        "energy": [0.0] * len(records),
    })


def test_lemat_local_parquet(tmp_path, heo_records):
    path = tmp_path / "lemat.parquet"
    pq.write_table(lemat_table(heo_records), path)
    report = load_structures("lemat", path)
    assert [r.id for r in report.records] == [f"agm{i:06d}" for i in range(len(heo_records))]
    assert [r.formula for r in report.records] == [r.formula for r in heo_records]
    np.testing.assert_allclose(report.records[3].cell, heo_records[3].cell)
    assert len(load_structures("lemat", path, limit=5).records) == 5


def test_lemat_missing_column_is_named(tmp_path, heo_records):
    path = tmp_path / "broken.parquet"
    pq.write_table(lemat_table(heo_records).drop(["species_at_sites"]), path)
    with pytest.raises(JaxmatInputError, match="species_at_sites"):
        load_structures("lemat", path)


def test_materials_project_docs_conversion(heo_records):
    docs = [{"material_id": f"mp-{i}", "structure": to_pymatgen(r)} for i, r in enumerate(heo_records[:3])]
    records = [make() for _, make in mp_docs_to_factories(docs)]
    assert [r.id for r in records] == ["mp-0", "mp-1", "mp-2"]
    assert [r.formula for r in records] == [r.formula for r in heo_records[:3]]


def test_unknown_source_and_missing_path(tmp_path):
    with pytest.raises(JaxmatInputError, match="unknown data source 'nope'"):
        load_structures("nope")
    with pytest.raises(JaxmatInputError, match="does not exist"):
        load_structures("file", tmp_path / "missing.extxyz")
    empty = _write_empty(tmp_path)
    report = load_structures("file", empty)
    assert not report.records and "has no atoms" in report.skipped[0][1]
    with pytest.raises(JaxmatInputError, match="no usable structures"):
        build_dataset({"source": "file", "path": str(empty), "limit": None, "cutoff": 8.0, "max_neighbors": 12})


def _write_empty(tmp_path):
    path = tmp_path / "empty.extxyz"
    write(path, [Atoms(cell=np.eye(3) * 3, pbc=True)], format="extxyz")
    return path
