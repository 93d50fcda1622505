"""Periodic neighbour lists for the JAX force fields and the device relaxation loop (one place; the only
vesin call site of jaxmat.forcefields and jaxmat.relax).

Two layouts: :func:`pair_list` (i, j, shift) for pair sums, and :func:`neighbor_matrix`, the
receiver-major matrix the JAX MACE uses: row ``n`` lists the senders of atom ``n`` in K slots, with
the integer lattice translation of each slot, so the vector r_n - r_sender + t @ cell can be rebuilt
on the device for any positions and any cell. Pairs beyond the model's own cutoff contribute exactly
zero (the MACE envelope and the pair potentials' smooth cutoffs vanish there with their derivatives).

The contract is jax-md's ``partition.neighbor_list``: **allocate** on the host (vesin's full list
with integer translations; capacities with a margin: slots, outgoing slots, and per system its own
lattice translations sized from its cell and its own candidate pairs, :func:`device_capacity`),
**update** on the device (:func:`device_neighbor_matrix`, inside the compiled relaxation loop, when
:func:`list_is_stale`: some atom moved more than skin / 2 or a cell changed enough; on CPU the loop hands this
back to vesin by default), and **did_buffer_overflow** (an atom with more neighbours than slots, a cell
needing translations beyond its reach): the loop stops and the host re-allocates, nothing is dropped. jax-md's partition itself is
not used: it bins one system's atoms into a single cell list and assumes at most one periodic image
of each neighbour, which fails exactly for cells narrower than twice the cutoff (the 64-atom HEO cells
at r_max 5–6 Å, primitive cells), and it does not batch systems of different cells. The device
update instead enumerates, per system, every (receiver, translation, sender) of its own n atoms and T translations
after wrapping atoms into the cell: sum over systems of n^2 T, never the largest system or smallest cell times all.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import SystemBatch
from jaxmat.padding import bucket


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

CANDIDATE_CHUNK = 1 << 20  # candidates per step of the on-device build at most (memory: a few arrays of this length)
LANES = 64  # senders side by side at most: a system of n atoms searches ceil(n / lanes) blocks of them


class DeviceCapacity(NamedTuple):
    """An on-device list's capacities, allocated on the host. Each system searches its own groups (receiver, translation,
    block of L senders): count_s prod_a(2 reach_sa + 1) ceil(count_s / L). start, count (S,) its first row and atoms
    (consecutive rows); reach (S, 3) the translations |t_a| <= reach_a searched; offsets (S + 1,) where its groups start
    (ceil(offsets[S] / G) steps); periodic (S,); chunk (G, L, 0) a shape only, G groups of L a step (the compiled size)."""

    start: np.ndarray
    count: np.ndarray
    reach: np.ndarray
    offsets: np.ndarray
    periodic: np.ndarray
    chunk: np.ndarray


def system_reach(cells, periodic, cutoff: float, margin: float = 1.0) -> np.ndarray:
    """Per system and lattice vector (S, 3), the translations that reach every neighbour within ``cutoff`` (Å) of atoms
    wrapped into the cell: ceil(margin cutoff |b_a|), b the reciprocal vectors; 0 where not periodic."""
    periodic, reach = np.asarray(periodic, bool), np.zeros((len(periodic), 3), np.int32)
    if np.any(periodic):
        reciprocal = np.linalg.norm(np.linalg.inv(np.asarray(cells, float)[periodic]), axis=1)  # |columns of inv|
        reach[periodic] = np.ceil(margin * cutoff * reciprocal * (1 + 1e-12))
    return reach


def chunk_shape(candidates: int, largest: int) -> tuple[int, int]:
    """(G, L) per step for about this many candidates, systems of up to ``largest`` atoms (G L <= CANDIDATE_CHUNK)."""
    lanes = min(LANES, 1 << max(int(largest) - 1, 0).bit_length())
    return min(bucket(max(-(-int(candidates) // lanes), 1)), CANDIDATE_CHUNK // lanes), lanes


def device_capacity(system_index: np.ndarray, n_atoms: int, n_systems: int, cells, periodic, cutoff: float,
                    chunk: tuple[int, int] | None = None, margin: float = 1.1) -> DeviceCapacity:
    """Allocate on the host: the systems of the first n_atoms rows (in order; padding rows belong to none), each
    with its own translations for these cells (``margin`` for cells that shrink) and its own candidates, searched
    ``chunk`` = (G, L) at a time (None: :func:`chunk_shape` of these systems)."""
    own = np.asarray(system_index)[:n_atoms]
    if np.any(np.diff(own) < 0):
        raise ValueError("the systems' rows must be consecutive")
    count = np.bincount(own, minlength=n_systems)[:n_systems].astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    periodic = np.asarray(periodic, bool)
    reach = system_reach(cells, periodic & (count > 0), cutoff, margin)
    translations = np.prod(2 * reach.astype(np.int64) + 1, axis=1)
    groups, lanes = chunk or chunk_shape(int(np.sum(count**2 * translations)), int(count.max(initial=1)))
    offsets = np.concatenate([[0], np.cumsum(count * translations * -(-count // lanes))])
    if offsets[-1] * lanes >= 2**31:
        raise ValueError(f"{offsets[-1] * lanes} candidate pairs exceed the on-device list's int32 range: fewer systems per batch")
    return DeviceCapacity(start.astype(np.int32), count.astype(np.int32), reach, offsets.astype(np.int32), periodic,
                          np.zeros((groups, lanes, 0), np.int8))


def _frames(positions, cells, capacity):
    """Every row wrapped into its system's cell: (cells, non-periodic ones the identity, (S, 3, 3); wrapped
    fractional (R, 3) in [0, 1); image (R, 3), r = (wrapped + image) @ cell)."""
    start, count, _, _, periodic, _ = capacity
    cells = jnp.where(periodic[:, None, None], cells, jnp.eye(3, dtype=cells.dtype))
    system = jnp.searchsorted(start + count, jnp.arange(positions.shape[0]), side="right", method="compare_all")
    system = jnp.minimum(system, len(count) - 1)
    fractional = jnp.einsum("na,nab->nb", positions, jnp.linalg.inv(cells)[system])
    image = jnp.where(periodic[system][:, None], jnp.floor(fractional), 0.0)
    return cells, fractional - image, image


def _candidates(frames, capacity, cutoff, first):
    """G groups of L candidates from group ``first``, flat (G L): receiver, sender, translation t' of the wrapped atoms,
    hit, where the receiver's candidates start in this step. The one rule of the device lists: receiver - (sender + t')
    within ``cutoff`` (Å), not an atom itself in the home cell, only the home cell where not periodic."""
    cells, wrapped, _ = frames
    start, count, reach, offsets, periodic, chunk = capacity
    n_groups, lanes, _ = chunk.shape
    group = first + jnp.arange(n_groups, dtype=jnp.int32)
    system = jnp.clip(jnp.searchsorted(offsets, group, side="right", method="compare_all") - 1, 0, count.shape[0] - 1)
    n, r = count[system], reach[system]
    dims, blocks = 2 * r + 1, jnp.maximum(-(-n // lanes), 1)
    per_receiver = jnp.maximum(dims[:, 0] * dims[:, 1] * dims[:, 2] * blocks, 1)
    i, rest = jnp.divmod(group - offsets[system], per_receiver)
    t, block = jnp.divmod(rest, blocks)
    shift = jnp.stack([t // (dims[:, 1] * dims[:, 2]), (t // dims[:, 2]) % dims[:, 1], t % dims[:, 2]], -1) - r
    j = block[:, None] * lanes + jnp.arange(lanes, dtype=jnp.int32)  # (G, L) local senders
    receiver, sender = start[system] + i, start[system][:, None] + j
    shifted = wrapped[receiver] + shift.astype(wrapped.dtype)
    vectors = jnp.einsum("gla,gab->glb", shifted[:, None, :] - wrapped[sender], cells[system])
    home = jnp.all(shift == 0, axis=-1)[:, None]
    hit = ((group < offsets[-1])[:, None] & (j < n[:, None]) & (jnp.sum(vectors**2, -1) < cutoff**2)
           & ~(home & (i[:, None] == j)) & (periodic[system][:, None] | home))
    receiver_first = (offsets[system] + i * per_receiver - first) * lanes
    flat = lambda a: jnp.broadcast_to(a, (n_groups, lanes) + a.shape[2:]).reshape((n_groups * lanes,) + a.shape[2:])
    return (flat(receiver[:, None]), flat(sender), flat(shift[:, None, :]), flat(hit), flat(receiver_first[:, None]))


def _search(positions, cells, capacity, cutoff, visit, carry):
    """Every system's candidates, a step at a time: visit(carry, frames, receiver, sender, t', hit, slot) -> carry, slot
    the hit's place in its receiver's row (translations, then senders, in order); returns (carry, hits per row (R,))."""
    capacity = DeviceCapacity(*(jnp.asarray(a) for a in capacity))
    frames, n_rows, (n_groups, lanes, _) = _frames(positions, cells, capacity), positions.shape[0], capacity.chunk.shape

    def step(state):
        first, seen, carry = state
        receiver, sender, shift, hit, receiver_first = _candidates(frames, capacity, cutoff, first)
        ranks = jnp.cumsum(hit, dtype=jnp.int32)
        before = jnp.concatenate([jnp.zeros(1, jnp.int32), ranks])[jnp.clip(receiver_first, 0, n_groups * lanes)]
        slot = seen[receiver] + ranks - before - 1
        carry = visit(carry, frames, receiver, sender, shift, hit, slot)
        seen = seen.at[jnp.where(hit, receiver, n_rows)].add(1, mode="drop")
        return first + n_groups, seen, carry

    more = lambda state: state[0] < capacity.offsets[-1]
    _, seen, carry = jax.lax.while_loop(more, step, (jnp.int32(0), jnp.zeros(n_rows, jnp.int32), carry))
    return carry, seen


def device_neighbor_counts(positions, cells, capacity, cutoff):
    """The most neighbours within ``cutoff`` (Å) of any row (int32), counted as :func:`device_neighbor_matrix` finds
    them: the slots to allocate (in a full list every pair appears both ways: it bounds the outgoing slots too)."""
    return jnp.max(_search(positions, cells, capacity, cutoff, lambda carry, *_: carry, ())[1], initial=0)


def device_neighbor_matrix(positions, cells, capacity, cutoff, n_slots: int):
    """The neighbour matrix within ``cutoff`` (Å) built on the device, in the layout of :func:`neighbor_matrix`
    (padding slots point at the last row); each system searches its own candidates (:class:`DeviceCapacity`).
    Returns (neighbors, translations, mask, overflow): overflow when an atom has more than n_slots neighbours or a
    cell now needs translations beyond its reach (the host then re-allocates; nothing is dropped silently)."""
    n_rows = positions.shape[0]

    def place(carry, frames, receiver, sender, shift, hit, slot):
        (neighbors, translations, mask), image = carry, frames[2].astype(jnp.int32)
        rows, cols = jnp.where(hit & (slot < n_slots), receiver, n_rows), jnp.where(hit, slot, 0)
        translation = shift - (image[receiver] - image[sender])  # t = t' - (k_receiver - k_sender)
        return tuple(a.at[rows, cols].set(v, mode="drop") for a, v in ((neighbors, sender), (translations, translation), (mask, True)))

    start = (jnp.full((n_rows, n_slots), n_rows - 1, jnp.int32), jnp.zeros((n_rows, n_slots, 3), jnp.int32),
             jnp.zeros((n_rows, n_slots), bool))
    (neighbors, translations, mask), seen = _search(positions, cells, capacity, cutoff, place, start)
    periodic = jnp.asarray(capacity.periodic) & (jnp.asarray(capacity.count) > 0)
    reciprocal = jnp.linalg.norm(jnp.linalg.inv(jnp.where(periodic[:, None, None], cells, jnp.eye(3, dtype=cells.dtype))), axis=1)
    needed = jnp.where(periodic[:, None], jnp.ceil(cutoff * reciprocal * (1 + 1e-12)), 0)  # translations each cell needs now
    overflow = (jnp.max(seen, initial=0) > n_slots) | jnp.any(needed > jnp.asarray(capacity.reach))
    return neighbors, translations, mask, overflow


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

