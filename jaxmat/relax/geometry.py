"""What one optimizer step leaves on the device: positions, cells and optimizer rows, with the constraints and the
cell filter applied as ASE's set_positions / set_cell and get_positions apply them (:mod:`jaxmat.relax.constraints`,
:mod:`jaxmat.relax.cell`)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxmat.relax import constraints
from jaxmat.relax.cell import CellFilter


def after_step(cell: CellFilter | None, state, coords, running, symmetric: bool):
    """Positions, cells and rows after a step (state: the loop's :class:`jaxmat.relax.state.DeviceState`): constraints adjust the new cell (FixSymmetry: its deformation
    symmetrised) and the new positions against the last ones (scaled to the new cell, as ASE's set_cell does),
    and the rows are read back from them, as ASE's get_positions does."""
    index, n_systems, n_rows = state.system_index, state.active.shape[0], state.positions.shape[0]
    has = jnp.any(state.sym_weights > 0, axis=1) if symmetric else jnp.zeros(n_systems, bool)

    def adjust(new, before, cells):
        adjusted = constraints.adjust_positions(new, before, state.free, state.com_mass, index, n_systems)
        if not symmetric:
            return adjusted
        step = constraints.symmetrize_vectors(new - before, cells, state.sym_source, state.sym_rotations,
                                              state.sym_weights, index)
        return jnp.where(has[index][:, None], before + step, adjusted)

    if cell is None:
        adjusted = adjust(coords, state.positions, state.cells)
        return adjusted, state.cells, adjusted
    cell_rows = coords[n_rows:].reshape(n_systems, 3, 3)
    positions, cells = cell.positions_and_cells(coords[:n_rows], cell_rows, state.original_cells, state.n_atoms, index)
    if symmetric:  # FixSymmetry.adjust_cell: the deformation from the current cell, symmetrised
        eye = jnp.eye(3, dtype=cells.dtype)
        delta = jnp.swapaxes(jnp.linalg.solve(state.cells, cells), 1, 2) - eye
        delta = constraints.symmetrize_tensors(delta, state.cells, state.sym_rotations, state.sym_weights)
        cells = jnp.where(has[:, None, None], jnp.einsum("sab,scb->sac", state.cells, delta + eye), cells)
    cells = jnp.where(running[:, None, None], cells, state.cells)
    scale = jnp.linalg.solve(state.cells, cells)  # old cell^-1 @ new cell
    before = jnp.einsum("na,nab->nb", state.positions, scale[index])
    adjusted = adjust(positions, before, cells)
    constrained = (state.constrained & running)[index][:, None]
    positions = jnp.where(running[index][:, None], jnp.where(constrained, adjusted, positions), state.positions)
    atom_rows, read_cell_rows = cell.read_rows(positions, cells, state.original_cells, state.n_atoms, index)
    atom_rows = jnp.where(constrained, atom_rows, coords[:n_rows])
    reset = running & (has | (cell.mask is not None))  # a mask, FixSymmetry reset what the optimizer set
    cell_rows = jnp.where(reset[:, None, None], read_cell_rows, cell_rows)
    return positions, cells, jnp.concatenate([atom_rows, cell_rows.reshape(-1, 3)])
