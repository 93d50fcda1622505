import numpy as np
import pytest

from jaxmat.heo.generate import equimolar_counts, rocksalt_heo
from jaxmat.testing import workload


def test_equimolar_counts_are_exact():
    atoms = rocksalt_heo(3, mode="equimolar", seed=4)  # 108 cation sites, 5 cations
    cations = atoms.numbers[atoms.numbers != 8]
    counts = np.bincount(cations, minlength=31)[[12, 27, 28, 29, 30]]
    assert counts.sum() == 108 and counts.max() - counts.min() <= 1
    assert (atoms.numbers == 8).sum() == 108


def test_random_mode_is_seeded_and_rattled():
    a, b, c = rocksalt_heo(2, seed=1), rocksalt_heo(2, seed=1), rocksalt_heo(2, seed=2)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, c.positions)
    ideal = rocksalt_heo(2, seed=1, rattle=0.0)
    displacement = a.positions - ideal.positions
    assert 0.07 < displacement.std() < 0.13


def test_ratios_and_workloads():
    atoms = rocksalt_heo(4, cations=("Mg", "Zn"), ratios=(1, 0), seed=0)
    assert set(atoms.numbers.tolist()) == {8, 12}
    assert [len(x) for x in workload("W1")] == [64] * 16 and [len(x) for x in workload("W2")] == [216] * 4
    with pytest.raises(ValueError, match="unknown mode"):
        rocksalt_heo(2, mode="ordered")


def test_equimolar_counts_helper():
    assert equimolar_counts(32, 5) == [7, 7, 6, 6, 6]
    assert equimolar_counts(10, 2, ratios=(3, 1)) == [8, 2]
    assert sum(equimolar_counts(108, 5)) == 108


def test_sqs_counts_exact_and_correlations_close_to_random_alloy():
    from icet.tools.structure_generation import _get_sqs_cluster_vector

    from jaxmat.heo.generate import cluster_space, equimolar_counts

    cations = ("Mg", "Co", "Ni", "Cu", "Zn")
    sqs = rocksalt_heo(2, mode="sqs", seed=0, rattle=0.0, sqs_steps=3000)
    counts = np.bincount(sqs.numbers, minlength=31)[[12, 27, 28, 29, 30]]
    assert counts.tolist() == equimolar_counts(32, 5) and (sqs.numbers == 8).sum() == 32
    space = cluster_space(4.2, cations)
    sublattice = space.get_sublattices(space.primitive_structure).active_sublattices[0].symbol
    target = _get_sqs_cluster_vector(space, {sublattice: {c: n / 32 for c, n in zip(cations, counts)}})
    pairs = [row["index"] for row in space.as_list if row["order"] == 2]

    def distance(atoms):
        return np.abs(space.get_cluster_vector(atoms)[pairs] - target[pairs]).sum()

    shuffled = [distance(rocksalt_heo(2, mode="equimolar", seed=s, rattle=0.0)) for s in range(10)]
    # closer to the random alloy's pair correlations than every one of 10 random equimolar shuffles
    assert distance(sqs) < min(shuffled)


def test_generate_cli(tmp_path):
    import ase.io

    from jaxmat.heo.generate import main

    out = tmp_path / "cells.extxyz"
    assert main(["--n", "1", "--count", "3", "--mode", "equimolar", "--out", str(out), "--seed", "5"]) == 0
    cells = ase.io.read(out, index=":")
    assert len(cells) == 3 and all(len(c) == 8 for c in cells)
    assert main(["--cations", "Mg,Xx", "--out", str(out)]) == 2


def test_generate_cli_rerattles_share_the_cation_arrangement(tmp_path):
    import ase.io

    from jaxmat.heo.generate import main

    out = tmp_path / "cells.extxyz"
    assert main(["--n", "2", "--count", "2", "--rattles", "3", "--rattle", "0.1", "--out", str(out)]) == 0
    cells = ase.io.read(out, index=":")
    assert [c.info["arrangement"] for c in cells] == [0, 0, 0, 1, 1, 1]
    assert all((c.numbers == cells[0].numbers).all() for c in cells[:3])
    assert not (cells[0].numbers == cells[3].numbers).all()
    ideal = rocksalt_heo(2, seed=0, rattle=0.0)
    displacements = [np.linalg.norm(c.positions - ideal.positions, axis=1) for c in cells[:3]]
    assert all(0.1 < d.mean() < 0.25 for d in displacements)  # 3D Gaussian of stdev 0.1 Å: mean norm 0.16 Å
    assert not np.allclose(cells[0].positions, cells[1].positions)
    assert not (tmp_path / "cells.extxyz.partial").exists()
