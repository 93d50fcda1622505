"""The on-device list rebuild's work is each system's own (its atoms squared times its own periodic images), not
the batch's largest system times the translations of its smallest cell."""

from types import SimpleNamespace

import numpy as np
from ase.build import bulk

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.neighbors import CANDIDATE_CHUNK, chunk_shape, device_capacity
from jaxmat.relax.lists import NeighborLists

CUTOFF = 5.5  # Å


def _mixed():
    """One 2-atom rock-salt primitive cell (plane spacing 2.4 Å: 3 images each way) beside two 216-atom supercells."""
    primitive = bulk("MgO", "rocksalt", a=4.21)
    supercell = bulk("MgO", "rocksalt", a=4.21, cubic=True) * (3, 3, 3)
    return [primitive, supercell, supercell.copy()]


def test_each_system_searches_its_own_candidates():
    structures = _mixed()
    batch = batch_from_atoms(structures)
    n_atoms, systems = len(batch.numbers), len(structures) + 1  # one padding slot
    system_index = np.concatenate([batch.system_index, np.full(8, systems - 1)])
    cells = np.concatenate([batch.cells, np.eye(3)[None]])
    periodic = np.array([True] * len(structures) + [False])
    capacity = device_capacity(system_index, n_atoms, systems, cells, periodic, CUTOFF)
    assert capacity.reach.tolist() == [[3, 3, 3], [1, 1, 1], [1, 1, 1], [0, 0, 0]]
    groups, lanes = capacity.chunk.shape[:2]
    assert lanes == 64  # senders side by side: a 216-atom system searches 4 blocks of them, the primitive cell one
    assert int(capacity.offsets[-1]) == 2 * 7**3 * 1 + 2 * 216 * 3**3 * 4  # each system's own (receiver, translation, block)
    work = -(-int(capacity.offsets[-1]) // groups) * groups * lanes  # candidates searched, step by step
    own = 2**2 * 7**3 + 2 * 216**2 * 3**3  # each system's atoms squared times its own translations
    extremes = len(structures) * 216**2 * 7**3  # every system at the largest size and the primitive cell's translations
    assert groups * lanes <= CANDIDATE_CHUNK and work < 1.25 * own + CANDIDATE_CHUNK < extremes / 10
    # the relaxation loop's lists: each system's own candidates too, in steps sized once for the run
    lists = NeighborLists(CUTOFF, len(system_index), systems, allocation="host")
    lists.reserve(structures)
    running = [SimpleNamespace(n_atoms=len(a), atoms=a) for a in structures]
    positions = np.concatenate([batch.positions, np.zeros((8, 3))])
    arrays = lists.arrays(running, positions, cells, system_index)
    np.testing.assert_array_equal(arrays["capacity"].offsets, capacity.offsets)
    assert lists.capacities[-1] == arrays["capacity"].chunk.shape[:2] == chunk_shape(len(system_index) * 216 * 27, 216)
