"""Neighbour lists rebuilt inside the compiled loop: vesin's pairs, overflow flags, re-allocation, compilations."""

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace.ops import outgoing_slots
from jaxmat.forcefields.neighbors import (device_capacity, device_near_list, device_neighbor_counts, device_neighbor_matrix,
                                         device_outgoing, list_reach, neighbor_matrix, pad_neighbor_matrix)
from jaxmat.relax import DeviceLoopOptions, relax

pytestmark = pytest.mark.usefixtures("x64")
CUTOFF = 6.0


def _structures():
    """A cell narrower than twice the cutoff (primitive fcc, 2 atoms), a small triclinic cell, a large cubic
    cell and a cell whose atoms sit outside it (unwrapped coordinates)."""
    small = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    triclinic = Atoms("Ar3", scaled_positions=[[0, 0, 0], [0.4, 0.3, 0.2], [0.7, 0.6, 0.9]],
                      cell=[[4.0, 0.0, 0.0], [1.5, 3.8, 0.0], [0.9, 1.1, 4.2]], pbc=True)
    large = bulk("Ar", "fcc", a=5.3, cubic=True) * (4, 4, 4)
    outside = bulk("Ar", "fcc", a=5.3, cubic=True)
    outside.positions[0] += [-7.0, 12.0, 5.4]
    structures = [small, triclinic, large, outside]
    for k, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=k)
    return structures


def _padded(structures, extra_rows=3):
    batch = batch_from_atoms(structures)
    n_atoms, n_systems = len(batch.numbers), len(structures) + 1  # one padding system
    system_index = np.concatenate([batch.system_index, np.full(extra_rows, n_systems - 1)])
    cells = np.concatenate([batch.cells, np.eye(3)[None]])
    periodic = np.array([True] * len(structures) + [False])
    positions = np.concatenate([batch.positions, np.zeros((extra_rows, 3))])
    return batch, positions, cells, system_index, periodic, n_atoms


def _slots(neighbors, translations, mask, rows):
    r, c = np.nonzero(mask[rows])
    r = rows[r]
    return sorted(zip(r.tolist(), neighbors[r, c].tolist(), map(tuple, translations[r, c].tolist())))


def _row(neighbors, translations, mask, row):
    """One row's (sender, translation) pairs in slot order."""
    return [(int(j), tuple(t)) for j, t, m in zip(neighbors[row], translations[row].tolist(), mask[row]) if m]


def test_device_list_holds_exactly_vesins_pairs():
    """Every (receiver, sender, image) within the cutoff once, as in the host (vesin) list, for each system of
    one padded batch; the outgoing slots are mace.ops.outgoing_slots' and the list reach the host's."""
    structures = _structures()
    batch, positions, cells, system_index, periodic, n_atoms = _padded(structures)
    capacity = device_capacity(system_index, n_atoms, len(cells), cells, periodic, CUTOFF)
    host = neighbor_matrix(batch, CUTOFF, len(positions))
    build = jax.jit(device_neighbor_matrix, static_argnums=(4,))
    neighbors, translations, mask, overflow = map(np.asarray, build(positions, cells, capacity, CUTOFF, host.slots_needed))
    assert not overflow
    assert int(device_neighbor_counts(positions, cells, capacity, CUTOFF)) == host.slots_needed  # the device's allocation count
    start = 0
    for atoms in structures:
        rows = np.arange(start, start + len(atoms))
        expected = _slots(host.neighbors, host.translations, host.mask, rows)
        assert _slots(neighbors, translations, mask, rows) == expected and len(expected) > 0
        start += len(atoms)
    assert not mask[n_atoms:].any()
    n_systems = len(cells)
    host_reach = np.zeros(n_systems)
    np.maximum.at(host_reach, system_index, np.where(host.mask, np.linalg.norm(host.translations, axis=-1), 0).max(1))
    np.testing.assert_allclose(np.asarray(list_reach(translations, mask, system_index, n_systems)), host_reach + 1.0)
    outgoing, too_many = device_outgoing(neighbors, mask, host.slots_needed)
    assert not too_many and np.array_equal(np.asarray(outgoing), outgoing_slots(neighbors, mask, host.slots_needed))
    # the same pairs once the cells changed: vectors follow the new cell (positions scaled with it)
    strain = np.eye(3) + np.array([[0.03, 0.01, 0.0], [0.0, -0.02, 0.0], [0.0, 0.0, 0.01]])
    moved = [a.copy() for a in structures]
    for a in moved:
        a.set_cell(a.cell[:] @ strain, scale_atoms=True)
    batch2, positions2, cells2, *_ = _padded(moved)
    host2 = neighbor_matrix(batch2, CUTOFF, len(positions2))
    neighbors2, translations2, mask2, overflow2 = map(np.asarray, build(positions2, cells2, capacity, CUTOFF, host2.slots_needed))
    assert not overflow2
    every = np.arange(n_atoms)
    assert _slots(neighbors2, translations2, mask2, every) == _slots(host2.neighbors, host2.translations, host2.mask, every)


def test_overflow_flags_instead_of_dropped_neighbours():
    structures = _structures()
    batch, positions, cells, system_index, periodic, n_atoms = _padded(structures)
    capacity = device_capacity(system_index, n_atoms, len(cells), cells, periodic, CUTOFF)
    needed = neighbor_matrix(batch, CUTOFF, len(positions)).slots_needed
    assert not bool(device_neighbor_matrix(positions, cells, capacity, CUTOFF, needed)[3])
    assert bool(device_neighbor_matrix(positions, cells, capacity, CUTOFF, needed - 1)[3])  # one slot short
    short = capacity._replace(reach=np.maximum(capacity.reach - 1, 0))  # one translation short along every axis
    assert bool(device_neighbor_matrix(positions, cells, short, CUTOFF, 4 * needed)[3])  # images out of reach
    compressed = cells.copy()
    compressed[:-1] *= 0.6  # cells shrink: the translations allocated for the old cells no longer reach every image
    wider = device_capacity(system_index, n_atoms, len(cells), compressed, periodic, CUTOFF)
    assert np.all(wider.reach >= capacity.reach) and np.any(wider.reach > capacity.reach)
    assert not bool(device_neighbor_matrix(positions * 0.6, compressed, wider, CUTOFF, 8 * needed)[3])
    assert bool(device_neighbor_matrix(positions * 0.6, compressed, capacity, CUTOFF, 8 * needed)[3])
    neighbors, _, mask, _ = device_neighbor_matrix(positions, cells, capacity, CUTOFF, needed)
    incoming = np.bincount(np.asarray(neighbors)[np.asarray(mask)]).max()
    assert not bool(device_outgoing(neighbors, mask, incoming)[1]) and bool(device_outgoing(neighbors, mask, incoming - 1)[1])


def test_near_list_holds_the_pairs_within_the_model_cutoff():
    """From a list within cutoff + skin, the near list keeps exactly vesin's pairs within the cutoff (each row's
    slots in their order), its outgoing slots are mace.ops.outgoing_slots', and one slot or sender slot short
    raises the overflow flag."""
    structures = _structures()
    batch, positions, cells, system_index, _, n_atoms = _padded(structures)
    skin = neighbor_matrix(batch, CUTOFF + 0.8, len(positions))
    skin = pad_neighbor_matrix(skin, n_atoms, len(positions), skin.slots_needed + 3)
    near = neighbor_matrix(batch, CUTOFF, len(positions))
    assert near.slots_needed < skin.slots_needed
    build = jax.jit(device_near_list, static_argnums=(7, 8))
    args = (positions, cells, system_index, skin.neighbors, skin.translations, skin.mask, CUTOFF)
    neighbors, translations, mask, outgoing, overflow = map(np.asarray, build(*args, near.slots_needed, near.slots_needed))
    assert not overflow and neighbors.shape == (len(positions), near.slots_needed)
    every = np.arange(n_atoms)
    assert _slots(neighbors, translations, mask, every) == _slots(near.neighbors, near.translations, near.mask, every)
    for row in (0, n_atoms // 2, n_atoms - 1):  # the skin list's order within a row
        within = set(_row(near.neighbors, near.translations, near.mask, row))
        assert _row(neighbors, translations, mask, row) == [
            pair for pair in _row(skin.neighbors, skin.translations, skin.mask, row) if pair in within]
    assert not mask[n_atoms:].any() and np.all(neighbors[~mask] == len(positions) - 1)
    assert np.array_equal(outgoing, outgoing_slots(neighbors, mask, near.slots_needed))
    assert bool(build(*args, near.slots_needed - 1, near.slots_needed)[4])  # a row's pairs do not fit
    assert bool(build(*args, near.slots_needed, near.slots_needed - 1)[4])  # an atom's outgoing pairs do not fit


def test_crowded_near_list_reallocates_before_any_step(monkeypatch):
    """Near-list capacities allocated too small (half the pairs): the loop takes no step on the truncated list,
    the host re-allocates, and the relaxation is the host loop's."""
    from jaxmat.forcefields.classical import lennard_jones
    from jaxmat.relax import lists

    monkeypatch.setattr(lists, "NEAR_MARGIN", 0.5)
    lj = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)
    structures = _structures()[:2]
    device = relax(structures, lj, optimizer="lbfgs", fmax=1e-3, max_steps=200, progress=False, loop="device")
    stats = device.stats
    host = relax(structures, lj, optimizer="lbfgs", fmax=1e-3, max_steps=200, progress=False, loop="host")
    assert [r.n_steps for r in device] == [r.n_steps for r in host] and {r.status for r in device} == {"converged"}
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)
    assert stats["reallocations"] >= 1


def test_a_crowded_near_list_always_grows():
    """After the loop reported a crowded near list, the host grows its capacities even where its own count (vesin's)
    finds them enough - a pair at the cutoff may count on one side only - so the loop cannot stop at the same place
    again; never beyond the skin list's slots."""
    from jaxmat.relax.device_loop import Running
    from jaxmat.relax.lists import NeighborLists

    structures = _structures()[:2]
    _, positions, cells, system_index, _, n_atoms = _padded(structures)
    running = [Running(k, atoms, len(atoms)) for k, atoms in enumerate(structures)]
    lists = NeighborLists(CUTOFF + 1.0, len(positions), len(cells), "host", model_cutoff=CUTOFF)
    lists.block = max(map(len, structures))
    arrays = lists.arrays(running, positions, cells, system_index)
    near, width = lists.near_slots, lists.outgoing_width
    assert arrays["near_neighbors"].shape == (len(positions), near) and near < lists.slots and width >= near
    lists.arrays(running, positions, cells, system_index)
    assert (lists.near_slots, lists.outgoing_width) == (near, width)  # nothing new: same capacities
    lists.arrays(running, positions, cells, system_index, crowded=True)
    assert near < lists.near_slots <= lists.slots and lists.outgoing_width >= lists.near_slots


def test_rebuilds_stay_on_the_device():
    """A 0.05 Å skin: many rebuilds, all inside the compiled loop (no return to the host, one compilation), and
    the host loop's steps and positions."""
    from jaxmat.forcefields.classical import lennard_jones

    lj = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)
    structures = _structures()[:2] + [_structures()[3]]
    device = relax(structures, lj, optimizer="fire", fmax=1e-3, max_steps=400, progress=False, loop="device",
                   device_loop=DeviceLoopOptions(skin=0.05, rebuild="device"))
    stats = device.stats
    host = relax(structures, lj, optimizer="fire", fmax=1e-3, max_steps=400, progress=False, loop="host")
    assert [r.n_steps for r in device] == [r.n_steps for r in host] and {r.status for r in device} == {"converged"}
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)
    assert stats["rebuilds"] >= 5 and stats["reallocations"] == 0 and stats["compilations"] == 1
    assert stats["loop_calls"] <= 1 + max(r.n_steps for r in device) // 50 + len(structures)  # rebuilds did not exit


@pytest.mark.parametrize("optimizer, a", [("fire", 6.0), ("lbfgs-linesearch", 5.9)])
def test_compressed_cell_reallocates_and_matches_the_host_loop(optimizer, a):
    """Expanded argon cells shrink by a quarter of their volume under cell relaxation: more neighbours per atom than the
    slots allocated and more images than the shift cube; the loop stops on the overflow flag, the host
    re-allocates (one more compiled shape) and the relaxation goes on as the host loop's."""
    from jaxmat.forcefields.classical import lennard_jones

    lj = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    expanded = bulk("Ar", "fcc", a=a, cubic=True) * (2, 2, 1)
    expanded.rattle(0.05, seed=1)
    small = bulk("Ar", "fcc", a=5.6) * (2, 1, 1)
    small.rattle(0.05, seed=2)
    options = dict(fmax=2e-3, max_steps=600, relax_cell=True, progress=False)
    device = relax([expanded, small], lj, optimizer=optimizer, loop="device", **options)
    stats = device.stats
    host = relax([expanded, small], lj, optimizer=optimizer, loop="host", **options)
    assert [r.status for r in device] == [r.status for r in host] == ["converged"] * 2
    assert [r.n_steps for r in device] == [r.n_steps for r in host]
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.cell[:], b.atoms.cell[:], atol=1e-8)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-8)
    assert device[0].atoms.get_volume() < 0.8 * expanded.get_volume()
    assert stats["reallocations"] >= 1 and stats["rebuilds"] > stats["reallocations"] and stats["compilations"] <= 3
