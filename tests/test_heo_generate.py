import numpy as np
import pytest

from jaxmat.heo.generate import rocksalt_heo, workload


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
        rocksalt_heo(2, mode="sqs")
