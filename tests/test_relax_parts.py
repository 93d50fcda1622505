"""The parts relax() is made of: scheduler (capacities, admission), state packing, results, input checks."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from jaxmat.relax.optimizers import FIRE, LBFGSLineSearch
from jaxmat.relax.results import RelaxResult, Results
from jaxmat.relax.scheduler import Capacities, admit, capacities, padded_rows, row_sizes
from jaxmat.relax.state import block_of, fresh_block, pack


def test_capacities_and_admission_keep_queue_order():
    structures = [bulk("Ar", "fcc", a=5.3, cubic=True) * r for r in ((2, 2, 2), (1, 1, 1), (2, 1, 1), (1, 1, 1))]
    sizes = row_sizes(structures, [0, 1, 2, 3], relax_cell=True)
    assert sizes == {0: 35, 1: 7, 2: 11, 3: 7}  # atoms + 3 cell rows
    assert capacities(sizes) == Capacities(60, 4)  # every row; every system (8 of the smallest would fit)
    assert capacities(sizes, max_atoms=10) == Capacities(35, 4)  # never below the largest structure
    assert capacities(sizes, max_atoms=100, max_systems=2) == Capacities(100, 2)  # the budget as given
    assert padded_rows(100) == 128 and padded_rows(100, devices=3) == 192  # multiples of lcm(64, devices)
    queue = [0, 1, 2, 3]
    assert admit(queue, sizes, 0, 0, Capacities(50, 9)) == [0, 1] and queue == [2, 3]  # 2 does not fit: 3 (it would) waits too
    assert admit(queue, sizes, 30, 1, Capacities(45, 2)) == [2] and queue == [3]  # the system limit
    assert admit(queue, sizes, 0, 0, Capacities(45, 0)) == [] and queue == [3]


@pytest.mark.parametrize("optimizer, relax_cell", [(FIRE(), False), (LBFGSLineSearch(memory=3), True)])
def test_pack_and_block_of_round_trip(optimizer, relax_cell):
    """Blocks packed at the capacities come back unchanged (positions, cells, optimizer state, records)."""
    systems = [bulk("Ar", "fcc", a=5.3, cubic=True), bulk("Ar", "fcc", a=5.3) * (2, 1, 1)]
    blocks = [fresh_block(optimizer, atoms) for atoms in systems]
    for k, block in enumerate(blocks):
        block["positions"] = block["positions"] + 0.1 * (k + 1)
        block["steps"] = np.int32(k + 3)
        block["atom_state"] = {key: v + k + 1 for key, v in block["atom_state"].items()}
    n_atoms = [len(a) for a in systems]
    state = pack(blocks, n_atoms, np.zeros(sum(n_atoms), int), 7, rows=16, systems=4, optimizer=optimizer, relax_cell=relax_cell)
    assert state["coords"].shape == (16 + 12 * relax_cell, 3) and state["active"].tolist() == [True, True, False, False]
    assert state["system_index"].tolist() == [0] * 4 + [1] * 2 + [3] * 10 and int(state["evaluations"]) == 7
    starts = np.cumsum([0] + n_atoms)
    for k, block in enumerate(blocks):
        back = block_of(state, k, slice(starts[k], starts[k + 1]), 16, relax_cell)
        np.testing.assert_array_equal(back["positions"], block["positions"])
        np.testing.assert_array_equal(back["cell"], block["cell"])
        assert int(back["steps"]) == k + 3
        for key in block["atom_state"]:
            np.testing.assert_array_equal(back["atom_state"][key], block["atom_state"][key])
        if relax_cell:
            np.testing.assert_array_equal(back["cell_coords"], block["cell_coords"])
    with pytest.raises(ValueError, match="exceed the device batch"):
        pack(blocks, n_atoms, np.zeros(6, int), 0, rows=6, systems=4, optimizer=optimizer, relax_cell=relax_cell)


def test_results_record_and_report():
    seen, ticks = [], []

    class Bar:
        def update(self):
            ticks.append(1)

    results = Results(3, Bar(), seen.append, keep_trajectory=True)
    atoms = bulk("Ar", "fcc", a=5.3)
    results.trajectories[2] = ["frame"]
    results.record(2, atoms, "converged", 5, -1.5, np.ones((1, 3)), np.eye(3) * 0.01)
    results.add(RelaxResult(0, atoms.copy(), "failed", 0, message="overlap"))
    assert [r is None for r in results.items] == [False, True, False] and len(ticks) == 2 and seen[0].index == 2
    done = results.items[2]
    assert done.trajectory == ["frame"] and done.fmax == pytest.approx(np.sqrt(3))
    assert done.atoms.get_potential_energy() == -1.5 and done.atoms.get_stress()[:3].tolist() == [0.01] * 3


def test_overlap_check_uses_the_neighbour_module():
    from jaxmat.forcefields.neighbors import close_pairs
    from jaxmat.relax.inputs import problem as overlap_message

    atoms = Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [3.9, 0.0, 0.0]], cell=[4.0, 4.0, 4.0], pbc=True)  # 0.1 Å through the face
    i, j, d = close_pairs(atoms.positions, atoms.cell[:], True, 0.5)
    assert len(d) == 1 and d[0] == pytest.approx(0.1)
    assert "overlap (distance 0.100 Å)" in overlap_message(atoms)
    atoms.pbc = False
    assert overlap_message(atoms) is None  # 3.9 Å apart without periodic images


def test_no_structures_no_work():
    from jaxmat.forcefields.classical import lennard_jones
    from jaxmat.relax import relax

    results = relax([], lennard_jones(), progress=False)
    assert results == [] and results.stats["force_calls"] == 0


def test_structures_that_cannot_be_relaxed_fail_alone_with_a_reason():
    """Found in review: a NaN or flat periodic cell and coordinates of 1e12 Å stopped the whole process inside
    vesin; a slab with pbc [T, T, F] was silently relaxed as a molecule; a constraint jaxmat does not apply was silently
    ignored; a
    molecule with relax_cell failed deep inside ASE's filter. Each is now one failed structure with a reason,
    the good structure beside it relaxes, on both loops."""
    from ase.constraints import Hookean

    from jaxmat.forcefields.classical import lennard_jones
    from jaxmat.relax import relax

    lj = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)
    good = bulk("Ar", "fcc", a=5.3, cubic=True)
    good.rattle(0.05, seed=1)
    nan_cell, flat_cell, far, slab, fixed = (good.copy() for _ in range(5))
    nan_cell.cell[0, 0] = np.nan
    flat_cell.set_cell(np.diag([5.3, 5.3, 0.0]))
    far.positions[1] = [1e12, 0.0, 0.0]
    slab.pbc = [True, True, False]
    fixed.set_constraint(Hookean(0, 1, k=1.0, rt=4.0))
    molecule = Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [3.8, 0.0, 0.0]])
    reasons = {1: "non-finite cell", 2: "zero volume", 3: "coordinates beyond", 4: "partly periodic", 5: "(Hookean)",
               6: "relax_cell needs a periodic structure"}
    for loop in ("host", "device"):
        results = relax([good, nan_cell, flat_cell, far, slab, fixed, molecule], lj, optimizer="fire", fmax=1e-3,
                        relax_cell=True, progress=False, loop=loop)
        assert results[0].status == "converged", (loop, results[0].message)
        for i, reason in reasons.items():
            assert results[i].status == "failed" and reason in results[i].message, (loop, i, results[i].message)
    assert relax([molecule], lj, optimizer="fire", fmax=1e-3, progress=False)[0].status == "converged"  # fine without relax_cell


@pytest.mark.parametrize("setting", [{"fmax": float("nan")}, {"fmax": 0.0}, {"max_steps": -1}, {"max_systems": -1},
                                     {"max_atoms": 0}])
def test_settings_that_cannot_describe_a_relaxation_are_refused(setting):
    from jaxmat.errors import ConfigError
    from jaxmat.forcefields.classical import lennard_jones
    from jaxmat.relax import relax

    with pytest.raises(ConfigError, match=next(iter(setting))):
        relax([bulk("Ar", "fcc", a=5.3)], lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0), progress=False, **setting)
