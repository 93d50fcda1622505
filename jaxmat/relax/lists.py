"""The device relaxation loop's neighbour lists: their capacities and where they are allocated.

When systems join the batch, or a list overflowed its capacities inside the loop, the host sizes the slots
(neighbours per atom), the outgoing slots (per sender) and the shift cube with a margin, and builds the
lists at the current geometry - with vesin on the host, or on the device by the loop's own rebuild
(:func:`jaxmat.forcefields.neighbors.device_neighbor_matrix`) after counting the neighbours there
(:func:`jaxmat.forcefields.neighbors.device_neighbor_counts`). Same pairs either way; the device build
saves the host's sorting and copies on an accelerator (0.84 -> 0.23 s of host time per W3 relaxation on an
H200), vesin is the faster on a CPU (0.4 s vs 14 s for 32 x 512-atom cells on two cores). Capacities only
grow, so a run compiles once or a few times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.mace.ops import outgoing_slots
from jaxmat.forcefields.neighbors import (
    DeviceCapacity,
    device_capacity,
    device_neighbor_counts,
    device_neighbor_matrix,
    device_outgoing,
    list_reach,
    neighbor_matrix,
    pad_neighbor_matrix,
    shift_reach,
)
from jaxmat.padding import bucket

SLOT_MARGIN = 1.05  # neighbour-slot capacity over the most neighbours seen at allocation (then rounded up by bucket)
GROWTH = 1.5  # a capacity that overflowed grows at least this much: a cell that keeps compressing re-allocates a few times, not every step
ALLOCATIONS = ("auto", "host", "device")

def device_lists(positions, cells, capacity, system_index, cutoff, n_slots: int, width: int, n_systems: int):
    """The neighbour arrays of the loop's state built on the device at this geometry and these capacities
    (neighbours, translations, mask, outgoing slots, reach, and the reference positions and cells of the
    staleness check), and whether they overflowed. The loop's in-place rebuild and the device allocation."""
    neighbors, translations, mask, overflow = device_neighbor_matrix(positions, cells, capacity, cutoff, n_slots)
    outgoing, too_many = device_outgoing(neighbors, mask, width)
    return {"neighbors": neighbors, "translations": translations, "mask": mask, "outgoing": outgoing,
            "reach": list_reach(translations, mask, system_index, n_systems), "reference": positions,
            "reference_cells": cells}, overflow | too_many


_count_on_device = jax.jit(device_neighbor_counts)
_allocate_on_device = jax.jit(device_lists, static_argnames=("n_slots", "width", "n_systems"))


class NeighborLists:
    """Capacities (slots, outgoing_width, shift_reach, block) of the loop's lists within ``cutoff`` (Å, the
    model's cutoff + skin) for ``rows`` rows and ``systems`` system slots. allocation: "host" (vesin),
    "device" (counted and built on the device) or "auto": the device on accelerators, the host on CPU."""

    def __init__(self, cutoff: float, rows: int, systems: int, allocation: str = "auto"):
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be auto, host or device, not {allocation!r}")
        self.allocation = allocation if allocation != "auto" else ("host" if jax.default_backend() == "cpu" else "device")
        self.cutoff, self.rows, self.systems = cutoff, rows, systems
        self.slots = self.outgoing_width = self.shift_reach = 0
        self.block = 0  # rows of the largest system (the on-device list's blocks); set by the loop before allocating

    def arrays(self, running, positions, cells, system_index) -> dict:
        """Neighbour matrix (within cutoff + skin) of the running systems at this geometry, with the reference
        geometry of the staleness check and the on-device list's capacities; grows the slot capacities when
        needed (a new compiled shape). running: the systems, each with ``n_atoms`` and ``atoms`` (its pbc)."""
        n_atoms = sum(r.n_atoms for r in running)
        periodic = np.zeros(self.systems, bool)
        periodic[: len(running)] = [bool(np.all(r.atoms.pbc)) for r in running]
        cells64 = np.asarray(cells, np.float64)
        needed = shift_reach(cells64, periodic, self.cutoff)
        if self.shift_reach and needed > self.shift_reach:  # the cube overflowed: one shell more than needed now
            needed += 1
        capacity = device_capacity(np.asarray(system_index), n_atoms, self.systems, self.block, cells64, periodic, self.cutoff,
                                   max(needed, self.shift_reach))
        self.shift_reach = int(np.abs(capacity.shifts).max(initial=0))  # never shrinks: one compiled shape for the run
        build = self._device_lists if self.allocation == "device" else self._host_lists
        return build(running, n_atoms, positions, cells, system_index, capacity) | {
            "members": capacity.members, "shifts": capacity.shifts, "periodic": capacity.periodic}

    def _grow(self, slots_needed: int, incoming: int) -> None:
        """Slot and outgoing-slot capacities that hold these counts, with a margin (a capacity that grows, grows
        by at least GROWTH)."""
        if slots_needed > self.slots or self.slots == 0:  # at least one slot, also with no pairs at all
            self.slots = bucket(max(int(np.ceil(slots_needed * SLOT_MARGIN)), int(np.ceil(self.slots * GROWTH))), 4)
        if incoming > self.outgoing_width or self.outgoing_width == 0:
            self.outgoing_width = bucket(max(int(np.ceil(incoming * SLOT_MARGIN)), int(np.ceil(self.outgoing_width * GROWTH)),
                                             self.slots), 4)

    def _host_lists(self, running, n_atoms, positions, cells, system_index, capacity) -> dict:
        """vesin's full list, sorted into slots on the host."""
        from jaxmat.forcefields.base import SystemBatch

        positions, cells = np.asarray(positions), np.asarray(cells)  # float32 where x64 is off
        batch = SystemBatch(positions[:n_atoms].astype(np.float64), np.zeros(n_atoms, int), cells[: len(running)].astype(np.float64),
                            np.stack([r.atoms.pbc for r in running]).reshape(-1, 3), np.asarray(system_index)[:n_atoms])
        matrix = neighbor_matrix(batch, self.cutoff, n_atoms + 1)
        incoming = np.bincount(matrix.neighbors[matrix.mask], minlength=n_atoms + 1).max(initial=0)
        self._grow(matrix.slots_needed, int(incoming))
        matrix = pad_neighbor_matrix(matrix, n_atoms, self.rows, self.slots)
        lengths = np.where(matrix.mask, np.linalg.norm(matrix.translations, axis=-1), 0.0).max(axis=1)
        reach = np.zeros(self.systems)
        np.maximum.at(reach, np.asarray(system_index), lengths)
        return {"neighbors": matrix.neighbors, "translations": matrix.translations, "mask": matrix.mask,
                "outgoing": outgoing_slots(matrix.neighbors, matrix.mask, self.outgoing_width),
                "reference": positions.copy(), "reference_cells": cells.copy(), "reach": reach + 1.0}

    def _device_lists(self, running, n_atoms, positions, cells, system_index, capacity) -> dict:
        """The same list built on the device (:func:`jaxmat.forcefields.neighbors.device_neighbor_matrix`, the loop's
        own rebuild): neighbours counted first to size the slots (one small sync), nothing sorted on the host."""
        positions, cells, system_index = (jax.device_put(np.asarray(a)) for a in (positions, cells, system_index))
        capacity = DeviceCapacity(*(jax.device_put(a) for a in capacity))
        cutoff = jnp.asarray(self.cutoff, positions.dtype)
        needed = int(_count_on_device(positions, cells, capacity, cutoff))
        self._grow(needed, needed)  # a full list is symmetric: no atom sends more than its own count
        arrays, overflow = _allocate_on_device(positions, cells, capacity, system_index, cutoff, n_slots=self.slots,
                                               width=self.outgoing_width, n_systems=self.systems)
        if bool(overflow):
            raise RuntimeError("the neighbour list built on the device overflowed the capacities counted for it (a bug)")
        return arrays
