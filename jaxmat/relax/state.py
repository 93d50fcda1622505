"""The device loop's state: many systems in one pytree of host arrays at fixed capacities, and back.

Rows are atoms, systems in order, then padding rows that belong to the last system slot (never read);
with cell relaxation three cell rows per system slot follow the atom rows in the optimizer's
coordinates (``coords``, ``row_index``). Each running system's share of the state is a *block*
(its rows, cell, optimizer state and records); :func:`pack` concatenates blocks and pads them,
:func:`block_of` cuts one out again (a survivor of a retire/refill keeps its optimizer state), and
:func:`fresh_block` starts a new system. Units: positions Å, cells Å (rows are lattice vectors),
energy eV, forces eV/Å, stress eV/Å^3. The neighbour arrays are added by the loop
(:meth:`jaxmat.relax.lists.NeighborLists.arrays`).
"""

from __future__ import annotations

import numpy as np

from jaxmat.relax import constraints
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.status import RUNNING

RECORDS = ("steps", "status", "energy", "fmax", "stress")  # per-system records carried through repacking


def fresh_block(optimizer, atoms, cell_filter: CellFilter | None = None) -> dict:
    """A new system's block: its positions, cell, constraint rows (:mod:`jaxmat.relax.constraints`), fresh
    optimizer state, zero steps."""
    n = len(atoms)
    return {"coords": atoms.positions.copy(), "positions": atoms.positions.copy(), "cell": np.asarray(atoms.cell[:], float),
            "original_cell": np.asarray(atoms.cell[:], float), **constraints.arrays(atoms),
            "cell_coords": (cell_filter or CellFilter()).initial_cell_rows([n])[0],
            "atom_state": optimizer.init_atoms(n), "cell_state": optimizer.init_atoms(3),
            "system_state": optimizer.init_systems(1), "forces": np.zeros((n, 3)), "steps": np.int32(0),
            "status": np.int32(RUNNING), "energy": np.nan, "fmax": 0.0, "stress": np.zeros((3, 3))}


def block_of(state: dict, k: int, rows: slice, n_rows: int, relax_cell: bool) -> dict:
    """System slot k's block of a (host) state whose atom rows of that system are ``rows`` (n_rows: row capacity)."""
    cell_rows = slice(n_rows + 3 * k, n_rows + 3 * k + 3)
    return {"coords": state["coords"][rows], "positions": state["positions"][rows], "cell": state["cells"][k],
            "free": state["free"][rows], "com_mass": state["com_mass"][rows], **symmetry_of(state, k, rows),
            "original_cell": state["original_cells"][k], "cell_coords": state["coords"][cell_rows] if relax_cell else None,
            "atom_state": {key: v[rows] for key, v in state["atom_state"].items()},
            "cell_state": {key: v[cell_rows] for key, v in state["atom_state"].items()} if relax_cell else None,
            "system_state": {key: v[k : k + 1] for key, v in state["system_state"].items()},
            "forces": state["forces"][rows]} | {key: state[key][k] for key in RECORDS}


def symmetry_of(state: dict, k: int, rows: slice) -> dict:
    """System k's FixSymmetry tables as in :func:`jaxmat.relax.constraints.arrays` (local atom indices)."""
    n_ops = int(state["sym_weights"][k].sum())
    return {"sym_source": state["sym_source"][rows, :n_ops] - rows.start, "sym_rotations": state["sym_rotations"][k, :n_ops]}


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


def pack(blocks: list[dict], n_atoms: list[int], species: np.ndarray, evaluations: int, *, rows: int, systems: int, optimizer,
         relax_cell: bool) -> dict:
    """The state of these systems (blocks with n_atoms atoms each; species per atom) padded to ``rows`` rows and
    ``systems`` system slots (the last one holds the padding rows; at least one padding row)."""
    n_rows = sum(n_atoms)
    if n_rows >= rows or len(blocks) >= systems:
        raise ValueError(f"{len(blocks)} systems / {n_rows} atoms exceed the device batch ({systems - 1} / {rows - 1})")
    pad_rows, pad_systems = rows - n_rows, systems - len(blocks)
    cat_rows = lambda key: pad(np.concatenate([b[key] for b in blocks]), pad_rows)
    cat_systems = lambda key, fill=0: pad(np.stack([np.asarray(b[key]) for b in blocks]), pad_systems, fill)
    system_index = np.concatenate([np.repeat(np.arange(len(blocks)), n_atoms), np.full(pad_rows, systems - 1)]).astype(np.int32)
    identity = np.tile(np.eye(3), (pad_systems, 1, 1))
    atom_state = {key: pad(np.concatenate([b["atom_state"][key] for b in blocks]), pad_rows) for key in blocks[0]["atom_state"]}
    row_mask = np.arange(rows) < n_rows
    state = {
        "coords": cat_rows("coords"), "positions": cat_rows("positions"), "free": cat_rows("free"), "com_mass": cat_rows("com_mass"),
        "constrained": pad(np.array([constraints.is_constrained(b) for b in blocks]), pad_systems, False),
        **symmetry_tables(blocks, n_atoms, rows, systems),
        "cells": np.concatenate([np.stack([b["cell"] for b in blocks]), identity]),
        "original_cells": np.concatenate([np.stack([b["original_cell"] for b in blocks]), identity]),
        "n_atoms": pad(np.array(n_atoms, float), pad_systems, 1.0),  # padding: F = I
        "species": pad(np.asarray(species).astype(np.int32), pad_rows),
        "system_index": system_index, "row_mask": row_mask, "row_index": system_index, "row_real": row_mask,
        "atom_state": atom_state,
        "system_state": {key: pad(np.concatenate([b["system_state"][key] for b in blocks]), pad_systems)
                         for key in blocks[0]["system_state"]},
        "active": np.arange(systems) < len(blocks), "forces": cat_rows("forces"),
        "steps": cat_systems("steps").astype(np.int32), "status": cat_systems("status").astype(np.int32),
        "energy": cat_systems("energy").astype(float), "fmax": cat_systems("fmax").astype(float),
        "stress": cat_systems("stress").astype(float), "evaluations": np.asarray(evaluations, np.int64),
    }
    if relax_cell:  # three cell rows per system slot after the atom rows
        cell_coords = np.concatenate([np.stack([b["cell_coords"] for b in blocks]), np.zeros((pad_systems, 3, 3))])
        state["coords"] = np.concatenate([state["coords"], cell_coords.reshape(-1, 3)])
        state["row_index"] = np.concatenate([system_index, np.repeat(np.arange(systems), 3)]).astype(np.int32)
        state["row_real"] = np.concatenate([row_mask, np.repeat(state["active"], 3)])
        fresh = optimizer.init_atoms(3 * pad_systems)
        state["atom_state"] = {key: np.concatenate([v, np.concatenate([b["cell_state"][key] for b in blocks]), fresh[key]])
                               for key, v in atom_state.items()}
    return state


def pad(array, extra: int, value=0) -> np.ndarray:
    """array with ``extra`` rows of ``value`` appended."""
    array = np.asarray(array)
    return np.concatenate([array, np.full((extra,) + array.shape[1:], value, array.dtype)])
