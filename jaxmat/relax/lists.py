"""The device relaxation loop's neighbour lists: their capacities and where they are allocated.

Two lists per state. The *skin list* holds every pair within the model's cutoff + skin at the reference
geometry; it stays valid until some atom or cell moved by about the skin (then it is rebuilt, inside the
loop or by the host: ``DeviceLoopOptions(rebuild=...)``). The *near list* is what the model evaluates: the skin list's
pairs within the model's own cutoff at the current geometry, recomputed on the device before every
evaluation (:func:`near_lists`). Pairs beyond the cutoff contribute exactly zero, so the model gives the
same numbers on fewer slots (W1: 72 instead of 88 per atom, the skin's shell of pairs left out).

When systems join the batch, or a list overflowed its capacities inside the loop, the host sizes the slots
(neighbours per atom), the near list's slots and outgoing slots (per sender) and each system's lattice
translations with a margin, and builds the lists at the current geometry - with vesin on the host, or on the device by the
loop's own rebuild (:func:`jaxmat.forcefields.neighbors.device_neighbor_matrix`) after counting the
neighbours there (:func:`jaxmat.forcefields.neighbors.device_neighbor_counts`). Same pairs either way; the
device build saves the host's sorting and copies on an accelerator (0.84 -> 0.23 s of host time per W3
relaxation on an H200), vesin is the faster on a CPU (0.4 s vs 14 s for 32 x 512-atom cells on two cores).
Capacities only grow, so a run compiles once or a few times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.neighbors import (
    DeviceCapacity,
    chunk_shape,
    device_capacity,
    device_near_list,
    device_neighbor_counts,
    device_neighbor_matrix,
    list_reach,
    neighbor_matrix,
    pad_neighbor_matrix,
    system_reach,
)
from jaxmat.padding import bucket

SLOT_MARGIN = 1.05  # skin-list slot capacity over the most neighbours seen at allocation (then rounded up by bucket)
NEAR_MARGIN = 1.1  # near-list slots over the most pairs within the cutoff at allocation: they come and go with every step
GROWTH = 1.5  # a capacity that overflowed grows at least this much: a cell that keeps compressing re-allocates a few times, not every step
PLACES = ("auto", "host", "device")


def place(choice: str, what: str) -> str:
    """Where lists are built: "host" or "device" for ``choice`` (one of PLACES; "auto": the device on
    accelerators, the host - vesin - on CPU, where it is the faster); ``what`` names the option in errors."""
    if choice not in PLACES:
        raise ValueError(f"{what} must be auto, host or device, not {choice!r}")
    return choice if choice != "auto" else ("host" if jax.default_backend() == "cpu" else "device")


NEAR_KEYS = ("near_neighbors", "near_translations", "near_mask", "near_outgoing")


def device_lists(positions, cells, capacity, system_index, cutoff, n_slots: int, n_systems: int):
    """The skin list of the loop's state built on the device at this geometry and capacities (neighbours,
    translations, mask, reach, and the reference positions and cells of the staleness check), and whether it
    overflowed. The loop's in-place rebuild and the device allocation."""
    neighbors, translations, mask, overflow = device_neighbor_matrix(positions, cells, capacity, cutoff, n_slots)
    return {"neighbors": neighbors, "translations": translations, "mask": mask,
            "reach": list_reach(translations, mask, system_index, n_systems), "reference": positions,
            "reference_cells": cells}, overflow


def near_lists(state, cutoff, n_slots: int, width: int):
    """The near list (:data:`NEAR_KEYS`) of a state's skin list at the state's positions and cells: its pairs
    within ``cutoff`` (Å, the model's) in n_slots slots, with outgoing slots (width); and whether it overflowed."""
    *arrays, overflow = device_near_list(state.positions, state.cells, state.system_index, state.neighbors,
                                         state.translations, state.mask, cutoff, n_slots, width)
    return dict(zip(NEAR_KEYS, arrays)), overflow


_count_on_device = jax.jit(device_neighbor_counts)
_allocate_on_device = jax.jit(device_lists, static_argnames=("n_slots", "n_systems"))


def _grown(capacity: int, needed: int, margin: float) -> int:
    """A capacity that holds ``needed`` with a margin, at least 1; one that must grow grows by at least GROWTH
    (never shrinks)."""
    if needed <= capacity and capacity > 0:
        return capacity
    return bucket(max(int(np.ceil(needed * margin)), int(np.ceil(capacity * GROWTH)), 1), 4)


class NeighborLists:
    """Capacities (slots, near_slots, outgoing_width, chunk) of the loop's skin list within
    ``cutoff`` (Å, the model's cutoff + skin) and near list within ``model_cutoff`` (Å) for ``rows`` rows and
    ``systems`` system slots. allocation: where the skin list is built, "host" (vesin), "device" (counted and
    built on the device) or "auto": the device on accelerators, the host on CPU."""

    def __init__(self, cutoff: float, rows: int, systems: int, allocation: str = "auto", model_cutoff: float | None = None):
        self.allocation = place(allocation, "allocation")
        self.cutoff, self.rows, self.systems = cutoff, rows, systems
        self.model_cutoff = cutoff if model_cutoff is None else model_cutoff
        self.slots = self.near_slots = self.outgoing_width = 0
        self.chunk = None  # (groups, lanes) per step of the on-device rebuild, sized once per run (reserve)

    @property
    def capacities(self) -> tuple:
        """The capacities that shape the compiled loop (slots, near slots, outgoing width, and the candidates per step of
        the on-device rebuild, which takes as many steps as the running systems' own candidates need:
        :class:`jaxmat.forcefields.neighbors.DeviceCapacity`)."""
        return self.slots, self.near_slots, self.outgoing_width, self.chunk

    def reserve(self, structures) -> None:
        """Size the on-device rebuild's steps once for a run of these structures (ase.Atoms): about the candidates of a
        batch of ``rows`` rows of the costliest per atom (a system's atoms times its own translations), so that
        refills keep the compiled shape."""
        per_atom = [len(a) * np.prod(2 * system_reach(a.cell[None], [bool(np.all(a.pbc))], self.cutoff, 1.1)[0] + 1)
                    for a in structures]
        self.chunk = self.chunk or chunk_shape(self.rows * max(per_atom, default=1), max(map(len, structures), default=1))

    def arrays(self, running, positions, cells, system_index, crowded: bool = False) -> dict:
        """The skin list of the running systems at this geometry, with the reference geometry of the staleness
        check and the on-device list's capacities, and the near list's arrays at their capacities (the loop fills
        them before each evaluation); grows the capacities when needed (a new compiled shape). running: the systems, each with
        ``n_atoms`` and ``atoms`` (its pbc). crowded: the loop found more pairs within the cutoff than the near list
        holds (its capacities grow even where this count - vesin's, float64 - finds them enough: a pair at the cutoff
        may count on one side and not the other, and the loop must not stop again at the same place)."""
        n_atoms = sum(r.n_atoms for r in running)
        periodic = np.zeros(self.systems, bool)
        periodic[: len(running)] = [bool(np.all(r.atoms.pbc)) for r in running]
        capacity = device_capacity(np.asarray(system_index), n_atoms, self.systems, np.asarray(cells, np.float64), periodic,
                                   self.cutoff, self.chunk)
        self.chunk = capacity.chunk.shape[:2]  # kept for the run: one compiled shape
        build = self._device_lists if self.allocation == "device" else self._host_lists
        skin, pairs = build(running, n_atoms, positions, cells, system_index, capacity)
        # the near list itself is picked out by the loop before each evaluation: here only its capacities (placeholder arrays)
        if crowded:
            pairs = max(pairs, self.near_slots + 1)
        self.near_slots = min(_grown(self.near_slots, pairs, NEAR_MARGIN), self.slots)  # never more than the skin list's
        self.outgoing_width = max(_grown(self.outgoing_width, pairs, NEAR_MARGIN), self.near_slots)  # full list: symmetric
        near = (np.zeros((self.rows, self.near_slots), np.int32), np.zeros((self.rows, self.near_slots, 3), np.int32),
                np.zeros((self.rows, self.near_slots), bool), np.zeros((self.rows, self.outgoing_width), np.int32))
        return skin | dict(zip(NEAR_KEYS, near)) | {"capacity": capacity}

    def _host_lists(self, running, n_atoms, positions, cells, system_index, capacity) -> tuple[dict, int]:
        """vesin's full list, sorted into slots on the host, and the most pairs of a row within the model's cutoff."""
        from jaxmat.forcefields.base import SystemBatch

        positions, cells = np.asarray(positions), np.asarray(cells)  # float32 where x64 is off
        batch = SystemBatch(positions[:n_atoms].astype(np.float64), np.zeros(n_atoms, int), cells[: len(running)].astype(np.float64),
                            np.stack([r.atoms.pbc for r in running]).reshape(-1, 3), np.asarray(system_index)[:n_atoms])
        matrix = neighbor_matrix(batch, self.cutoff, n_atoms + 1)
        pairs = neighbor_matrix(batch, self.model_cutoff, n_atoms + 1).slots_needed if self.model_cutoff < self.cutoff else matrix.slots_needed
        self.slots = _grown(self.slots, matrix.slots_needed, SLOT_MARGIN)
        matrix = pad_neighbor_matrix(matrix, n_atoms, self.rows, self.slots)
        lengths = np.where(matrix.mask, np.linalg.norm(matrix.translations, axis=-1), 0.0).max(axis=1)
        reach = np.zeros(self.systems)
        np.maximum.at(reach, np.asarray(system_index), lengths)
        return {"neighbors": matrix.neighbors, "translations": matrix.translations, "mask": matrix.mask,
                "reference": positions.copy(), "reference_cells": cells.copy(), "reach": reach + 1.0}, int(pairs)

    def _device_lists(self, running, n_atoms, positions, cells, system_index, capacity) -> tuple[dict, int]:
        """The same list built on the device (:func:`jaxmat.forcefields.neighbors.device_neighbor_matrix`, the loop's
        own rebuild): neighbours counted first to size the slots (one small sync), nothing sorted on the host; and
        the most pairs of a row within the model's cutoff (the same count)."""
        positions, cells, system_index = (jax.device_put(np.asarray(a)) for a in (positions, cells, system_index))
        capacity = DeviceCapacity(*(jax.device_put(a) for a in capacity))
        cutoff = jnp.asarray(self.cutoff, positions.dtype)
        self.slots = _grown(self.slots, int(_count_on_device(positions, cells, capacity, cutoff)), SLOT_MARGIN)
        arrays, overflow = _allocate_on_device(positions, cells, capacity, system_index, cutoff, n_slots=self.slots,
                                               n_systems=self.systems)
        if bool(overflow):
            raise RuntimeError("the neighbour list built on the device overflowed the capacities counted for it (a bug)")
        return arrays, int(_count_on_device(positions, cells, capacity, jnp.asarray(self.model_cutoff, positions.dtype)))
