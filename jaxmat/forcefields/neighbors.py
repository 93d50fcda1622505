"""Periodic neighbour lists for the JAX force fields and the device relaxation loop (one place; the only
vesin call site of jaxmat.forcefields and jaxmat.relax).

Two layouts: :func:`pair_list` (i, j, shift) for pair sums, and :func:`neighbor_matrix`, the
receiver-major matrix the JAX MACE uses: row ``n`` lists the senders of atom ``n`` in K slots, with
the integer lattice translation of each slot, so the vector r_n - r_sender + t @ cell can be rebuilt
on the device for any positions and any cell. Pairs beyond the model's own cutoff contribute exactly
zero (the MACE envelope and the pair potentials' smooth cutoffs vanish there with their derivatives).

The contract is jax-md's ``partition.neighbor_list``: **allocate** on the host (vesin's full list
with integer translations; capacities with a margin: slots, outgoing slots, per-system blocks of
rows, a cube of lattice translations sized from the current cells, :func:`device_capacity`),
**update** on the device (:func:`device_neighbor_matrix`, inside the compiled relaxation loop, when
:func:`list_is_stale`: some atom moved more than skin / 2 or a cell changed enough; on CPU the loop hands
this back to vesin by default), and
**did_buffer_overflow** (an atom with more neighbours than slots, a cell needing translations beyond
the cube): the loop stops and the host re-allocates, nothing is dropped. jax-md's partition itself is
not used: it bins one system's atoms into a single cell list and assumes at most one periodic image
of each neighbour, which fails exactly for cells narrower than twice the cutoff (the 64-atom HEO cells
at r_max 5–6 Å, primitive cells), and it does not batch systems of different cells. The device
update instead enumerates, per system block of B rows, every (receiver, sender, translation) of the
cube after wrapping atoms into the cell: O(B^2 T) per system, fine for 64–512-atom cells, never the
batch squared; triclinic and changing cells need nothing special.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import SystemBatch


def _vesin_neighbor_list():
    """vesin's NeighborList class. vesin imports torch, when installed, only to accept torch tensors, which jaxmat
    never passes: imported first here, it is imported with torch hidden, so a JAX run does not pay torch's
    import (2-4 s); a process that has already imported torch keeps vesin's torch support."""
    import sys

    if "vesin" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError: vesin sets HAS_TORCH = False
        try:
            import vesin  # noqa: F401
        finally:
            del sys.modules["torch"]
    from vesin import NeighborList

    return NeighborList


def pair_list(batch: SystemBatch, cutoff: float):
    """Full pair list over all systems: i, j (P,) int32, lattice translations (P, 3) int (the pair vector
    is r_j - r_i + t @ cell), system of each pair (P,) int32."""
    calculator = _vesin_neighbor_list()(cutoff=float(cutoff), full_list=True)
    pairs_i, pairs_j, translations, systems = [], [], [], []
    for s in range(batch.n_systems):
        atoms = np.flatnonzero(batch.system_index == s)
        periodic = bool(batch.pbc[s].all())
        i, j, t = calculator.compute(batch.positions[atoms], batch.cells[s] if periodic else np.zeros((3, 3)), periodic, "ijS")
        pairs_i.append(atoms[i]), pairs_j.append(atoms[j]), translations.append(t), systems.append(np.full(len(i), s))
    cat = lambda xs, shape, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(shape, dtype)
    return (cat(pairs_i, (0,), np.int32), cat(pairs_j, (0,), np.int32), cat(translations, (0, 3), np.int64),
            cat(systems, (0,), np.int32))


def close_pairs(positions: np.ndarray, cell: np.ndarray, periodic: bool, cutoff: float, full_list: bool = False):
    """The pairs of atoms of one structure closer than ``cutoff`` (Å), periodic images included: i, j,
    distance (Å); each pair once (half list) or in both directions (``full_list``)."""
    return _vesin_neighbor_list()(cutoff=float(cutoff), full_list=full_list).compute(
        np.asarray(positions, float), np.asarray(cell, float) if periodic else np.zeros((3, 3)), periodic, "ijd")


def pair_shift_vectors(batch: SystemBatch, translations: np.ndarray, systems: np.ndarray) -> np.ndarray:
    """Cartesian shift (P, 3) Å of each pair: t @ cell of its system."""
    return np.einsum("pa,pab->pb", translations.astype(np.float64), batch.cells[systems]) if len(systems) else np.zeros((0, 3))


class NeighborMatrix(NamedTuple):
    """Receiver-major neighbour slots for ``n_rows`` atoms (padding rows and slots point at row ``n_atoms``).

    neighbors (R, K) int32 sender of each slot; translations (R, K, 3) integer lattice translation of
    the sender; mask (R, K) bool, False on padding; slots_needed: the most neighbours any atom has."""

    neighbors: np.ndarray
    translations: np.ndarray
    mask: np.ndarray
    slots_needed: int


def neighbor_matrix(batch: SystemBatch, cutoff: float, n_rows: int, n_slots: int | None = None) -> NeighborMatrix:
    """The neighbour matrix of a batch within ``cutoff`` (Å), padded to n_rows atoms and n_slots slots
    (default: as many as needed). Raises ValueError when n_slots is too small (the caller re-allocates)."""
    n_atoms = len(batch.numbers)
    if n_rows <= n_atoms:
        raise ValueError(f"n_rows {n_rows} must exceed the {n_atoms} atoms (one padding row at least)")
    senders, receivers, translations, _ = pair_list(batch, cutoff)
    order = np.argsort(receivers, kind="stable")
    senders, receivers, translations = senders[order], receivers[order], translations[order]
    counts = np.bincount(receivers, minlength=n_atoms)
    needed = int(counts.max(initial=0))
    n_slots = max(needed, 1) if n_slots is None else n_slots
    if needed > n_slots:
        raise ValueError(f"an atom has {needed} neighbours within {cutoff} Å, more than the {n_slots} slots allocated")
    slot = np.arange(len(receivers)) - np.repeat(np.cumsum(counts) - counts, counts)
    neighbors = np.full((n_rows, n_slots), n_atoms, np.int32)
    neighbors[receivers, slot] = senders
    # vesin's pair (i -> j) has vector r_j - r_i + t @ cell; as (sender i, receiver j) the receiver-minus-sender
    # vector r_j - r_i + t @ cell keeps the same translation
    slot_translations = np.zeros((n_rows, n_slots, 3), np.int32)
    slot_translations[receivers, slot] = translations
    mask = np.zeros((n_rows, n_slots), bool)
    mask[receivers, slot] = True
    return NeighborMatrix(neighbors, slot_translations, mask, needed)


def pad_neighbor_matrix(matrix: NeighborMatrix, n_atoms: int, n_rows: int, n_slots: int) -> NeighborMatrix:
    """The same lists in a larger matrix (n_rows >= rows, n_slots >= slots); new slots point at row n_atoms."""
    rows, slots = matrix.neighbors.shape
    if n_rows < rows or n_slots < slots:
        raise ValueError(f"cannot pad a {rows} x {slots} neighbour matrix to {n_rows} x {n_slots}")
    neighbors = np.full((n_rows, n_slots), n_atoms, np.int32)
    neighbors[:rows, :slots] = matrix.neighbors
    translations = np.zeros((n_rows, n_slots, 3), np.int32)
    translations[:rows, :slots] = matrix.translations
    mask = np.zeros((n_rows, n_slots), bool)
    mask[:rows, :slots] = matrix.mask
    return NeighborMatrix(neighbors, translations, mask, matrix.slots_needed)


def slot_shifts(translations, cells, system_index):
    """Cartesian shift (R, K, 3) Å of every slot from its integer translation and the receiver's cell
    (works on host or device arrays; with a changing cell the shifts follow it)."""
    return jnp.einsum("nka,nab->nkb", translations.astype(cells.dtype), cells[system_index])


def list_is_stale(positions, reference_positions, row_mask, skin: float, cells=None, reference_cells=None, reach=None,
                  system_mask=None):
    """True when some pair distance may have changed by skin since the list was built (device check): twice
    the largest displacement of a real atom plus, where cells change, the largest |t| ||cell - reference||
    over the systems in system_mask (reach: 1 + the longest lattice translation t in each system's list).
    A pair beyond cutoff + skin at build time is then still beyond the cutoff."""
    squared = jnp.where(row_mask, jnp.sum((positions - reference_positions) ** 2, axis=-1), 0.0)
    change = 2.0 * jnp.sqrt(jnp.max(squared))
    if cells is not None:
        drift = jnp.sqrt(jnp.sum((cells - reference_cells) ** 2, axis=(1, 2))) * reach
        change = change + jnp.max(jnp.where(system_mask, drift, 0.0))
    return change > skin


# ---- the list rebuilt on the device (inside the compiled relaxation loop) ------------------------------


class DeviceCapacity(NamedTuple):
    """Capacities of an on-device list, allocated on the host (each array shape is a compiled shape):
    members (S, B) rows of each system, B atoms per block at most (the row count for padding); shifts (T, 3)
    integer translations, the cube |t_a| <= reach; periodic (S,) bool."""

    members: np.ndarray
    shifts: np.ndarray
    periodic: np.ndarray


def shift_reach(cells: np.ndarray, periodic: np.ndarray, cutoff: float, margin: float = 1.1) -> int:
    """The translations per axis that reach every neighbour within ``cutoff`` (Å) for these cells (S, 3, 3),
    times ``margin`` for cells that shrink later: ceil(margin cutoff max_a |b_a|), b the reciprocal vectors
    (plane spacings 1/|b_a|); atoms are wrapped into the cell before the search, so this is enough."""
    if not np.any(periodic):
        return 0
    reciprocal = np.linalg.norm(np.linalg.inv(np.asarray(cells, float)[np.asarray(periodic)]), axis=1)  # |columns of inv|
    return int(np.ceil(margin * cutoff * reciprocal.max() * (1 + 1e-12)))


def device_capacity(system_index: np.ndarray, n_atoms: int, n_systems: int, block: int, cells, periodic, cutoff: float,
                    reach: int = 0) -> DeviceCapacity:
    """Allocate on the host: blocks of ``block`` rows for the systems of the first n_atoms rows (padding rows
    belong to no block) and the shift cube for these cells (at least ``reach``)."""
    system_index = np.asarray(system_index)
    rows = len(system_index)
    members = np.full((n_systems, block), rows, np.int32)
    for s in range(n_systems):
        own = np.flatnonzero(system_index[:n_atoms] == s)
        if len(own) > block:
            raise ValueError(f"system {s} has {len(own)} atoms, more than the block of {block}")
        members[s, : len(own)] = own
    n = max(shift_reach(cells, periodic, cutoff), int(reach))
    axis = np.arange(-n, n + 1)
    shifts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).astype(np.int32)
    return DeviceCapacity(members, shifts, np.asarray(periodic, bool))


def _block_frame(positions, cell, own, periodic):
    """One system block's atoms wrapped into its cell: (cell, wrapped fractional (B, 3) in [0, 1), image (B, 3)
    with r = (wrapped + image) @ cell, local row numbers (B,), pair_ok (B, B) both rows members)."""
    cell = jnp.where(periodic, cell, jnp.eye(3, dtype=cell.dtype))
    fractional = positions @ jnp.linalg.inv(cell)
    image = jnp.where(periodic, jnp.floor(fractional), 0.0)
    local = jnp.arange(positions.shape[0], dtype=jnp.int32)
    return cell, fractional - image, image, local, own[:, None] & own[None, :]


def _hits(frame, periodic, shift, cutoff):
    """(B, B) True where receiver - (sender + shift) is a pair within ``cutoff`` (Å): the one rule of the device
    lists (an atom is not its own neighbour in the home cell; non-periodic systems use the home cell only)."""
    cell, wrapped, _, local, pair_ok = frame
    vectors = (wrapped[:, None, :] - wrapped[None, :, :] + shift.astype(wrapped.dtype)) @ cell  # receiver - sender
    zero = jnp.all(shift == 0)
    return (pair_ok & (jnp.sum(vectors**2, -1) < cutoff**2) & ~(zero & (local[:, None] == local[None, :]))
            & (periodic | zero))


def _system_block(positions, cell, own, periodic, shifts, cutoff, n_slots):
    """One system's list: receivers and senders among its B member rows, images from the shift cube.
    Returns local senders (B, K), translations (B, K, 3), mask (B, K) and each receiver's count (B,)."""
    block = positions.shape[0]
    frame = _block_frame(positions, cell, own, periodic)
    _, _, image, local, _ = frame
    image_shift = (image[:, None, :] - image[None, :, :]).astype(jnp.int32)  # receiver minus sender

    def one_shift(carry, shift):
        count, senders, translations, mask = carry
        hit = _hits(frame, periodic, shift, cutoff)
        slot = count[:, None] + jnp.cumsum(hit, axis=1, dtype=jnp.int32) - 1
        keep = hit & (slot < n_slots)
        rows, cols = jnp.where(keep, local[:, None], block), jnp.where(keep, slot, 0)
        senders = senders.at[rows, cols].set(jnp.broadcast_to(local[None, :], hit.shape).astype(jnp.int32), mode="drop")
        translations = translations.at[rows, cols].set(shift - image_shift, mode="drop")  # t = t' - (k_recv - k_send)
        mask = mask.at[rows, cols].set(True, mode="drop")
        return (count + jnp.sum(hit, axis=1, dtype=jnp.int32), senders, translations, mask), None

    start = (jnp.zeros(block, jnp.int32), jnp.zeros((block, n_slots), jnp.int32), jnp.zeros((block, n_slots, 3), jnp.int32),
             jnp.zeros((block, n_slots), bool))
    (count, senders, translations, mask), _ = jax.lax.scan(one_shift, start, shifts)
    return senders, translations, mask, count


def _chunk(n_systems: int, block: int, pairs_per_chunk: int) -> int:
    """Systems per lax.map step: about pairs_per_chunk candidate pairs (never the whole batch squared)."""
    return max(1, min(n_systems, pairs_per_chunk // max(1, block * block)))


def device_neighbor_counts(positions, cells, capacity, cutoff, pairs_per_chunk: int = 1 << 22):
    """The most neighbours within ``cutoff`` (Å) of any row, counted on the device over the same candidates and
    rule as :func:`device_neighbor_matrix` (int32 scalar): the slot capacity to allocate. In a full list every
    pair appears in both directions, so it bounds the outgoing slots too."""
    members, shifts, periodic = capacity
    n_rows, (n_systems, block) = positions.shape[0], members.shape
    own = members < n_rows
    safe = jnp.where(own, members, 0)

    def one_system(args):
        positions, cell, own, periodic = args
        frame = _block_frame(positions, cell, own, periodic)
        count = lambda total, shift: (total + jnp.sum(_hits(frame, periodic, shift, cutoff), axis=1, dtype=jnp.int32), None)
        return jax.lax.scan(count, jnp.zeros(block, jnp.int32), shifts)[0]

    counts = jax.lax.map(one_system, (positions[safe], cells, own, periodic), batch_size=_chunk(n_systems, block, pairs_per_chunk))
    return jnp.max(jnp.where(own, counts, 0), initial=0)


def device_neighbor_matrix(positions, cells, capacity, cutoff, n_slots: int, pairs_per_chunk: int = 1 << 22):
    """The neighbour matrix within ``cutoff`` (Å) built on the device, in the layout of :func:`neighbor_matrix`
    (padding slots point at the last row): candidates are every (receiver, sender, shift) of one system
    block, O(B^2 T) per system, systems in chunks of about pairs_per_chunk candidates (never the whole
    batch squared). Returns (neighbors, translations, mask, overflow): overflow when an atom has more than
    n_slots neighbours or a cell now needs translations beyond the shift cube (the host then re-allocates;
    nothing is dropped silently)."""
    members, shifts, periodic = capacity
    n_rows, (n_systems, block) = positions.shape[0], members.shape
    own = members < n_rows
    safe = jnp.where(own, members, 0)
    senders, translations, mask, count = jax.lax.map(lambda args: _system_block(*args, shifts, cutoff, n_slots),
                                                     (positions[safe], cells, own, periodic),
                                                     batch_size=_chunk(n_systems, block, pairs_per_chunk))
    global_senders = jnp.where(mask, jnp.take_along_axis(safe, senders.reshape(n_systems, -1), 1).reshape(senders.shape), n_rows - 1)
    rows = jnp.where(own, members, n_rows).reshape(-1)
    neighbors = jnp.full((n_rows, n_slots), n_rows - 1, jnp.int32).at[rows].set(global_senders.reshape(-1, n_slots), mode="drop")
    slot_translations = jnp.zeros((n_rows, n_slots, 3), jnp.int32).at[rows].set(translations.reshape(-1, n_slots, 3), mode="drop")
    slot_mask = jnp.zeros((n_rows, n_slots), bool).at[rows].set(mask.reshape(-1, n_slots), mode="drop")
    reach = jnp.max(jnp.abs(shifts)) if shifts.shape[0] else 0
    reciprocal = jnp.linalg.norm(jnp.linalg.inv(jnp.where(periodic[:, None, None], cells, jnp.eye(3, dtype=cells.dtype))), axis=1)
    needed_reach = jnp.ceil(cutoff * jnp.max(jnp.where((periodic & jnp.any(own, 1))[:, None], reciprocal, 0.0)) * (1 + 1e-12))
    overflow = (jnp.max(jnp.where(own, count, 0)) > n_slots) | (needed_reach > reach)
    return neighbors, slot_translations, slot_mask, overflow


def device_outgoing(neighbors, mask, width: int):
    """On the device, what :func:`jaxmat.forcefields.mace.ops.outgoing_slots` computes on the host: for every
    row, the flat slots (n * K + k) where it is the sender, in increasing order, n_rows * K where none;
    (outgoing (R, width), overflow when some atom sends more than width)."""
    n_rows, n_slots = neighbors.shape
    senders = jnp.where(mask, neighbors, n_rows).reshape(-1)
    order = jnp.argsort(senders, stable=True)
    ordered = senders[order]
    counts = jnp.zeros(n_rows + 1, jnp.int32).at[senders].add(1)
    starts = jnp.cumsum(counts) - counts
    column = jnp.arange(senders.shape[0], dtype=jnp.int32) - starts[ordered]
    keep = (ordered < n_rows) & (column < width)
    out = jnp.full((n_rows, width), n_rows * n_slots, jnp.int32)
    out = out.at[jnp.where(keep, ordered, n_rows), jnp.where(keep, column, 0)].set(order.astype(jnp.int32), mode="drop")
    return out, jnp.max(counts[:n_rows]) > width


def list_reach(translations, mask, system_index, n_systems):
    """Per system, 1 + the longest integer translation |t| in its list (the factor of a cell change in
    :func:`list_is_stale`)."""
    lengths = jnp.where(mask, jnp.linalg.norm(translations.astype(float), axis=-1), 0.0)
    return jax.ops.segment_max(jnp.max(lengths, axis=1), system_index, n_systems).clip(0.0) + 1.0


# ---- the pairs within the model's cutoff, from a list with a skin (what a model evaluates) -------------


def near_pairs(positions, cells, system_index, neighbors, translations, mask, cutoff):
    """(R, K) True on the slots of a list built with a skin whose pair is within ``cutoff`` (Å) at these
    positions and cells (vector r_receiver - r_sender + t @ cell, as the models build it)."""
    vectors = positions[:, None, :] - positions[neighbors] + slot_shifts(translations, cells, system_index)
    return mask & (jnp.sum(vectors**2, axis=-1) < cutoff**2)


def device_near_list(positions, cells, system_index, neighbors, translations, mask, cutoff, n_slots: int, width: int):
    """The slots of ``neighbors`` within ``cutoff`` (:func:`near_pairs`) moved to the front of each row, in
    their order, in a matrix of n_slots slots (padding points at the last row), with its outgoing slots
    (:func:`device_outgoing`, width). Pairs beyond a model's cutoff contribute exactly zero, so the model
    gives the same numbers on this list with fewer slots (the skin's pairs left out). Returns (neighbors,
    translations, mask, outgoing, overflow): overflow when a row has more such pairs than n_slots or an
    atom sends more than width (the host then re-allocates; nothing is dropped silently)."""
    n_rows, n_skin = neighbors.shape
    near = near_pairs(positions, cells, system_index, neighbors, translations, mask, cutoff)
    column = jnp.where(near, jnp.cumsum(near, axis=1, dtype=jnp.int32) - 1, n_slots)  # n_slots: not kept
    source = jnp.zeros((n_rows, n_slots), jnp.int32).at[jnp.arange(n_rows)[:, None], column].set(
        jnp.broadcast_to(jnp.arange(n_skin, dtype=jnp.int32), near.shape), mode="drop")
    count = jnp.sum(near, axis=1, dtype=jnp.int32)
    near_mask = jnp.arange(n_slots)[None, :] < count[:, None]
    near_neighbors = jnp.where(near_mask, jnp.take_along_axis(neighbors, source, 1), n_rows - 1)
    near_translations = jnp.where(near_mask[..., None], jnp.take_along_axis(translations, source[..., None], 1), 0)
    outgoing, too_many = device_outgoing(near_neighbors, near_mask, width)
    return near_neighbors, near_translations, near_mask, outgoing, (jnp.max(count) > n_slots) | too_many

