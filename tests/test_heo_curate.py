"""HEO curation: the filter on hand-checked rows, schema errors, seeded splits, the CLI on a LeMat-schema parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmat.errors import JaxmatInputError
from jaxmat.heo.curate import (
    HEOFilter,
    cation_entropy,
    curate,
    main,
    rejection_reason,
    source_of,
    split_indices,
)


def _row(species, forces=True, energy=-10.0, immutable_id="mp-1"):
    n = len(species)
    rng = np.random.default_rng(n)
    return {"species_at_sites": species, "cartesian_site_positions": rng.normal(size=(n, 3)).tolist(),
            "lattice_vectors": (5 * np.eye(3)).tolist(), "energy": energy,
            "forces": rng.normal(size=(n, 3)).tolist() if forces else [], "immutable_id": immutable_id}


ROCKSALT_HEO = ["Mg", "Co", "Ni", "Cu", "Zn"] + ["O"] * 5


@pytest.mark.parametrize("species, expected", [
    (ROCKSALT_HEO, None),                                              # (MgCoNiCuZn)O: kept
    (["Mg", "Co", "Ni", "Cu", "O", "O", "O", "O"], None),              # 4 cations + O = 5 elements: kept
    (["Mg", "Co", "Ni", "O", "O", "O"], "fewer than 5 elements"),
    (["Mg", "Co", "Ni", "Cu", "Zn", "S"], "no oxygen"),
    (["Mg", "Co", "Ni", "Si", "Zn", "O", "O"], "non-metal other than O"),   # Si is a metalloid
    (["Mg", "Co", "Ni", "Cu", "F", "O"], "non-metal other than O"),
    (["La", "Sr", "Ba", "Ca", "Mn", "O", "O", "O"], None),             # perovskite-type, all metals
])
def test_filter_on_hand_checked_rows(species, expected):
    assert rejection_reason(_row(species)) == expected


def test_filter_needs_consistent_finite_forces():
    assert rejection_reason(_row(ROCKSALT_HEO, forces=False)) == "no forces"
    row = _row(ROCKSALT_HEO)
    row["forces"] = row["forces"][:-1]
    assert rejection_reason(row) == "inconsistent array lengths"
    row = _row(ROCKSALT_HEO)
    row["forces"][0][1] = float("nan")
    assert rejection_reason(row).startswith("non-finite")
    assert rejection_reason(_row(["Mg", "Co", "Ni", "Cu", "Xx", "O"])) == "unknown element"


def test_optional_filters():
    equimolar = _row(ROCKSALT_HEO)
    assert abs(cation_entropy(ROCKSALT_HEO) - np.log(5)) < 1e-12  # ln 5 = 1.609 R
    assert rejection_reason(equimolar, HEOFilter(min_entropy=1.5, equimolar=True)) is None
    uneven = _row(["Mg"] * 4 + ["Co", "Ni", "Cu", "Zn"] + ["O"] * 8)
    assert rejection_reason(uneven, HEOFilter(equimolar=True)) == "cations not equimolar"
    assert rejection_reason(uneven, HEOFilter(min_entropy=1.5)) == "cation entropy below 1.5 R"  # S = 1.386 R
    noble = _row(["Mg", "Co", "Ni", "Pt", "Zn", "O", "O", "O", "O", "O"])
    assert rejection_reason(noble) is None
    assert rejection_reason(noble, HEOFilter(exclude_noble_metals=True)) == "noble metal"


def test_source_from_immutable_id():
    assert [source_of(i) for i in ("mp-1234", "oqmd-99", "agm002153773", "x")] == ["mp", "oqmd", "alexandria", "other"]


def test_split_is_seeded_and_complete():
    a, b, c = split_indices(100, seed=3), split_indices(100, seed=3), split_indices(100, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [70, 20, 10]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    with pytest.raises(JaxmatInputError, match="summing to 1"):
        split_indices(10, (0.5, 0.2, 0.2))


@pytest.fixture(scope="module")
def lemat_parquet(tmp_path_factory):
    """A LeMat-Bulk-schema parquet built from the packaged LeMat HEO frames (ids are synthetic: the frames carry
    none; they cycle through the three id styles) plus two rows the filter must drop."""
    import ase.io
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jaxmat.heo.curate import atoms_to_row
    from jaxmat.resources import resource_path

    frames = ase.io.read(resource_path("lemat_heo_valid.xyz.gz"), index=":30", format="extxyz")
    rows = []
    for i, atoms in enumerate(frames):
        row = atoms_to_row(atoms, i)
        row["immutable_id"] = ["mp-%d" % i, "oqmd-%d" % i, "agm%09d" % i][i % 3]
        rows.append(row)
    rows.append({**_row(["Mg", "Co", "O"]), "immutable_id": "mp-x1"})            # too few elements
    rows.append({**_row(ROCKSALT_HEO, forces=False), "immutable_id": "mp-x2"})    # no forces
    for row in rows:
        row["elements"] = sorted(set(row["species_at_sites"]))
        row["nelements"] = len(row["elements"])
    path = tmp_path_factory.mktemp("lemat") / "lemat_heo.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, len(frames)


def test_cli_on_lemat_parquet(lemat_parquet, tmp_path):
    import ase.io

    path, n_frames = lemat_parquet
    out = tmp_path / "heo"
    assert main(["--source", str(path), "--out", str(out), "--seed", "7"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_scanned"] == n_frames + 2
    assert summary["rejected"] == {"fewer than 5 elements": 1, "no forces": 1}
    assert summary["rows_kept"] == n_frames == sum(summary["splits"].values())
    assert summary["per_source"] == {"mp": 10, "oqmd": 10, "alexandria": 10}
    train = ase.io.read(out / "train.extxyz", index=":")
    assert len(train) == summary["splits"]["train"] == 21
    assert {"DFT_energy", "immutable_id", "source"} <= set(train[0].info) and "DFT_forces" in train[0].arrays
    for name in summary["plots"]:
        assert (out / name).stat().st_size > 1000
    assert not (tmp_path / "heo.partial").exists()
    again = curate(str(path), tmp_path / "again", seed=7, progress=False, plots=False)
    assert again["split_ids"] == summary["split_ids"]  # same seed, same splits


def test_schema_and_empty_result_errors(lemat_parquet, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, _ = lemat_parquet
    table = pq.read_table(path).drop(["forces"])
    broken = tmp_path / "broken.parquet"
    pq.write_table(table, broken)
    with pytest.raises(JaxmatInputError, match=r"lacks column\(s\) \['forces'\]"):
        curate(str(broken), tmp_path / "x", progress=False)
    only_bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{**_row(["Mg", "O"]), "elements": ["Mg", "O"], "nelements": 2}]), only_bad)
    with pytest.raises(JaxmatInputError, match="no row .* passed the HEO filter"):
        curate(str(only_bad), tmp_path / "y", progress=False)
    assert not (tmp_path / "y").exists() and not (tmp_path / "y.partial").exists()
