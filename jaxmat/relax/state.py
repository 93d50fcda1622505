"""The device loop's state: many systems in one typed pytree (:class:`DeviceState`) at fixed capacities, and back.

Rows are atoms, systems in order, then padding rows that belong to the last system slot (never read);
with cell relaxation three cell rows per system slot follow the atom rows in the optimizer's
coordinates (``coords``, ``atom_state``, ``row_index``). Every field states in its metadata the axis it
lives on (:data:`ROWS`, :data:`OPTIMIZER_ROWS`, :data:`SYSTEMS`, :data:`LISTS`, :data:`SCALAR`) and, where a
system carries it through a retire/refill, its key in that system's *block* (a dict: its rows, cell,
optimizer state and records). :func:`pack` concatenates blocks and pads them, :func:`block_of` cuts one out
again, both by looping over the fields; :func:`fresh_block` starts a new system. Units: positions Å,
cells Å (rows are lattice vectors), energy eV, forces eV/Å, stress eV/Å^3. The neighbour-list fields
(:data:`LISTS`) are filled by the loop (:meth:`jaxmat.relax.lists.NeighborLists.arrays`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxmat.padding import pad
from jaxmat.relax import constraints
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.status import RUNNING

ROWS, OPTIMIZER_ROWS, SYSTEMS, LISTS, SCALAR = "rows", "optimizer rows", "systems", "lists", "scalar"
"""the axes of the fields: atom rows; optimizer rows (atom rows, then 3 cell rows per system slot when cells
relax); system slots; the neighbour lists' own capacities (filled by the loop); none"""


def along(axis: str, block: str | None = None, fill=0, dtype=None, cell_block: str | None = None):
    """A field on ``axis``; block: its key in a system's block (None: derived when packing); fill: the padding
    value; dtype: cast when packing; cell_block: the block key of an optimizer-row field's 3 cell rows."""
    return dataclasses.field(default=None, metadata={"axis": axis, "block": block, "fill": fill, "dtype": dtype,
                                                     "cell_block": cell_block})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceState:
    """Every running system of the device loop at fixed capacities (R rows, R' optimizer rows, S system slots)."""

    coords: Any = along(OPTIMIZER_ROWS, "coords", cell_block="cell_coords")  # (R', 3) the optimizer's coordinates
    atom_state: Any = along(OPTIMIZER_ROWS, "atom_state", cell_block="cell_state")  # the optimizer's per-row state
    row_index: Any = along(OPTIMIZER_ROWS)  # (R',) system slot of each optimizer row
    row_real: Any = along(OPTIMIZER_ROWS)  # (R',) a row of a running system
    positions: Any = along(ROWS, "positions")  # (R, 3) Å
    forces: Any = along(ROWS, "forces")  # (R, 3) eV/Å, the last evaluation's
    free: Any = along(ROWS, "free")  # (R, 3) 0/1 (FixAtoms, FixCartesian)
    com_mass: Any = along(ROWS, "com_mass")  # (R,) amu in a FixCom, else 0
    species: Any = along(ROWS)  # (R,) the model's species index
    system_index: Any = along(ROWS)  # (R,) system slot of each atom row (padding: the last)
    row_mask: Any = along(ROWS)  # (R,) a real atom
    sym_source: Any = along(ROWS)  # (R, W) FixSymmetry: the row each operation maps a row from
    cells: Any = along(SYSTEMS, "cell", fill=np.eye(3))  # (S, 3, 3) Å
    original_cells: Any = along(SYSTEMS, "original_cell", fill=np.eye(3))  # (S, 3, 3) Å, the cell filter's reference
    system_state: Any = along(SYSTEMS, "system_state")  # the optimizer's per-system state
    steps: Any = along(SYSTEMS, "steps", dtype=np.int32)  # (S,) optimizer steps taken
    status: Any = along(SYSTEMS, "status", dtype=np.int32)  # (S,) jaxmat.relax.status codes
    energy: Any = along(SYSTEMS, "energy", dtype=float)  # (S,) eV
    fmax: Any = along(SYSTEMS, "fmax", dtype=float)  # (S,) the largest generalized force, eV/Å
    stress: Any = along(SYSTEMS, "stress", dtype=float)  # (S, 3, 3) eV/Å^3
    active: Any = along(SYSTEMS)  # (S,) still relaxing
    n_atoms: Any = along(SYSTEMS)  # (S,) float, padding slots 1
    constrained: Any = along(SYSTEMS)  # (S,) any constraint
    sym_rotations: Any = along(SYSTEMS)  # (S, W, 3, 3) FixSymmetry's rotations
    sym_weights: Any = along(SYSTEMS)  # (S, W) 1 for a real operation
    evaluations: Any = along(SCALAR)  # structure evaluations so far
    neighbors: Any = along(LISTS)  # the skin list (R, K), its translations (R, K, 3) and mask (R, K)
    translations: Any = along(LISTS)
    mask: Any = along(LISTS)
    reach: Any = along(LISTS)  # (S,) 1 + the longest translation in each system's list
    reference: Any = along(LISTS)  # (R, 3) Å positions the list was built at
    reference_cells: Any = along(LISTS)  # (S, 3, 3) Å cells the list was built at
    near_neighbors: Any = along(LISTS)  # the near list the model evaluates (R, K'), with its outgoing slots
    near_translations: Any = along(LISTS)
    near_mask: Any = along(LISTS)
    near_outgoing: Any = along(LISTS)
    capacity: Any = along(LISTS)  # the on-device rebuild's (jaxmat.forcefields.neighbors.DeviceCapacity)

    def __getitem__(self, name: str):
        """state["positions"] reads state.positions."""
        return getattr(self, name)

    def replace(self, **fields) -> "DeviceState":
        return dataclasses.replace(self, **fields)


FIELDS = {f.name: f.metadata for f in dataclasses.fields(DeviceState)}
CARRIED = {name: m for name, m in FIELDS.items() if m["block"] is not None}
"""the fields a system carries through a retire/refill (its block)"""


def fresh_block(optimizer, atoms, cell_filter: CellFilter | None = None) -> dict:
    """A new system's block: its positions, cell, constraint rows (:mod:`jaxmat.relax.constraints`), fresh
    optimizer state, zero steps."""
    n = len(atoms)
    return {"coords": atoms.positions.copy(), "positions": atoms.positions.copy(), "cell": np.asarray(atoms.cell[:], float),
            "original_cell": np.asarray(atoms.cell[:], float), **constraints.arrays(atoms),
            "cell_coords": (cell_filter or CellFilter()).initial_cell_rows([n])[0],
            "atom_state": optimizer.init_atoms(n), "cell_state": optimizer.init_atoms(3),
            "system_state": {key: v[0] for key, v in optimizer.init_systems(1).items()}, "forces": np.zeros((n, 3)),
            "steps": np.int32(0), "status": np.int32(RUNNING), "energy": np.nan, "fmax": 0.0, "stress": np.zeros((3, 3))}


def block_of(state: DeviceState, k: int, rows: slice, n_rows: int, relax_cell: bool) -> dict:
    """System slot k's block of a (host) state whose atom rows of that system are ``rows`` (n_rows: row capacity)."""
    cell_rows = slice(n_rows + 3 * k, n_rows + 3 * k + 3)
    block = symmetry_of(state, k, rows)
    for name, m in CARRIED.items():
        value = getattr(state, name)
        if m["axis"] == SYSTEMS:
            block[m["block"]] = jax.tree_util.tree_map(lambda v: v[k], value)
        else:
            block[m["block"]] = jax.tree_util.tree_map(lambda v: v[rows], value)
            if m["axis"] == OPTIMIZER_ROWS:
                block[m["cell_block"]] = jax.tree_util.tree_map(lambda v: v[cell_rows], value) if relax_cell else None
    return block


def symmetry_of(state: DeviceState, k: int, rows: slice) -> dict:
    """System k's FixSymmetry tables as in :func:`jaxmat.relax.constraints.arrays` (local atom indices)."""
    n_ops = int(state.sym_weights[k].sum())
    return {"sym_source": state.sym_source[rows, :n_ops] - rows.start, "sym_rotations": state.sym_rotations[k, :n_ops]}


def symmetry_tables(blocks: list[dict], n_atoms: list[int], rows: int, systems: int) -> dict:
    """FixSymmetry tables at width W (the most operations of any system; 0 without FixSymmetry): sym_source (rows, W)
    global rows, sym_rotations (systems, W, 3, 3), sym_weights (systems, W) 1 for a real operation."""
    width = max(len(b["sym_rotations"]) for b in blocks)
    source = np.tile(np.arange(rows, dtype=np.int32)[:, None], (1, width))
    rotations, weights = np.zeros((systems, width, 3, 3)), np.zeros((systems, width))
    start = 0
    for k, (b, n) in enumerate(zip(blocks, n_atoms)):
        n_ops = len(b["sym_rotations"])
        source[start : start + n, :n_ops] = b["sym_source"] + start
        rotations[k, :n_ops], weights[k, :n_ops] = b["sym_rotations"], 1.0
        start += n
    return {"sym_source": source, "sym_rotations": rotations, "sym_weights": weights}


def _carried(name: str, m: dict, blocks: list[dict], pad_rows: int, pad_systems: int, relax_cell: bool):
    """One carried field of the packed state: the blocks' values joined along the field's axis and padded."""
    values = [b[m["block"]] for b in blocks]
    cast = (lambda v: v.astype(m["dtype"])) if m["dtype"] is not None else (lambda v: v)
    if m["axis"] == SYSTEMS:
        return jax.tree_util.tree_map(lambda *v: pad(cast(np.stack([np.asarray(x) for x in v])), pad_systems, m["fill"]), *values)
    joined = jax.tree_util.tree_map(lambda *v: pad(cast(np.concatenate(v)), pad_rows, m["fill"]), *values)
    if m["axis"] == OPTIMIZER_ROWS and relax_cell:  # three cell rows per system slot after the atom rows
        cells = jax.tree_util.tree_map(lambda *v: pad(np.concatenate(v), 3 * pad_systems, m["fill"]),
                                       *[b[m["cell_block"]] for b in blocks])
        joined = jax.tree_util.tree_map(lambda a, c: np.concatenate([a, c]), joined, cells)
    return joined


def pack(blocks: list[dict], n_atoms: list[int], species: np.ndarray, evaluations: int, *, rows: int, systems: int, optimizer,
         relax_cell: bool) -> DeviceState:
    """The state of these systems (blocks with n_atoms atoms each; species per atom) padded to ``rows`` rows and
    ``systems`` system slots (the last one holds the padding rows; at least one padding row); the neighbour-list
    fields are left empty. optimizer: kept for the signature (padding optimizer rows are zeros, as every
    optimizer's fresh rows)."""
    n_rows = sum(n_atoms)
    if n_rows >= rows or len(blocks) >= systems:
        raise ValueError(f"{len(blocks)} systems / {n_rows} atoms exceed the device batch ({systems - 1} / {rows - 1})")
    pad_rows, pad_systems = rows - n_rows, systems - len(blocks)
    fields = {name: _carried(name, m, blocks, pad_rows, pad_systems, relax_cell) for name, m in CARRIED.items()}
    system_index = pad(np.repeat(np.arange(len(blocks)), n_atoms), pad_rows, systems - 1).astype(np.int32)
    row_mask, active = np.arange(rows) < n_rows, np.arange(systems) < len(blocks)
    row_index, row_real = system_index, row_mask
    if relax_cell:
        row_index = np.concatenate([system_index, np.repeat(np.arange(systems), 3)]).astype(np.int32)
        row_real = np.concatenate([row_mask, np.repeat(active, 3)])
    return DeviceState(**fields, **symmetry_tables(blocks, n_atoms, rows, systems),
                       species=pad(np.asarray(species).astype(np.int32), pad_rows), system_index=system_index,
                       row_mask=row_mask, row_index=row_index, row_real=row_real, active=active,
                       n_atoms=pad(np.array(n_atoms, float), pad_systems, 1.0),  # padding: F = I
                       constrained=pad(np.array([constraints.is_constrained(b) for b in blocks]), pad_systems, False),
                       evaluations=np.asarray(evaluations, np.int64))
