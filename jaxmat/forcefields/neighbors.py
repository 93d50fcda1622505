"""Periodic neighbour lists for the JAX force fields and the device relaxation loop (one place).

The pairs come from vesin on the host (a full list with integer lattice translations, so cells
narrower than twice the cutoff — the 64-atom HEO cells at r_max 5–6 Å — and triclinic cells are
handled by enumerating periodic images). jax-md's ``partition.neighbor_list`` is not used: it bins
one system's atoms into a single cell list and assumes at most one periodic image of each neighbour,
which fails exactly for those small cells and does not batch systems of different cells.

Two layouts: :func:`pair_list` (i, j, shift) for pair sums, and :func:`neighbor_matrix`, the
receiver-major matrix the JAX MACE uses: row ``n`` lists the senders of atom ``n`` in K slots, with
the integer lattice translation of each slot, so the vector r_n - r_sender + t @ cell can be rebuilt
on the device for any positions and any cell. A list built with ``cutoff + skin`` stays complete
until some atom has moved more than ``skin / 2``, or a cell changed enough (:func:`list_is_stale`): the Verlet-list contract
of jax-md (allocate on the host with a capacity margin, check on the device, re-allocate when it no
longer holds). Pairs beyond the model's own cutoff contribute exactly zero (the MACE envelope and the
pair potentials' smooth cutoffs vanish there with their derivatives).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import SystemBatch


def bucket(n: int, minimum: int = 8) -> int:
    """Round up to the next size of the form m * 2^k with m in 8..15 (at most 12.5 % padding): the padded
    sizes of atoms, neighbour slots and systems, so that changing batches reuse a few compiled shapes."""
    n = max(int(n), minimum)
    step = 2 ** max(int(np.floor(np.log2(n))) - 3, 0)
    return int(-(-n // step) * step)


def pair_list(batch: SystemBatch, cutoff: float):
    """Full pair list over all systems: i, j (P,) int32, lattice translations (P, 3) int (the pair vector
    is r_j - r_i + t @ cell), system of each pair (P,) int32."""
    from vesin import NeighborList

    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    pairs_i, pairs_j, translations, systems = [], [], [], []
    for s in range(batch.n_systems):
        atoms = np.flatnonzero(batch.system_index == s)
        periodic = bool(batch.pbc[s].all())
        i, j, t = calculator.compute(batch.positions[atoms], batch.cells[s] if periodic else np.zeros((3, 3)), periodic, "ijS")
        pairs_i.append(atoms[i]), pairs_j.append(atoms[j]), translations.append(t), systems.append(np.full(len(i), s))
    cat = lambda xs, shape, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(shape, dtype)
    return (cat(pairs_i, (0,), np.int32), cat(pairs_j, (0,), np.int32), cat(translations, (0, 3), np.int64),
            cat(systems, (0,), np.int32))


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
