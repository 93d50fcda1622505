"""ASE's FrechetCellFilter in JAX, for many systems at once: atoms and cells relaxed together.

The optimizer moves, per system of N atoms, N + 3 rows: atom positions in the undeformed cell and the
scaled matrix logarithm of the deformation gradient. With F the deformation gradient (cell =
original cell @ F^T), c = e = N (ASE's ``cell_factor`` and ``exp_cell_factor`` defaults):

    rows[:N] = r @ F^-T            rows[N:] = e * logm(c F)
    F = expm(rows[N:] / e) / c     cell = original @ F^T            r = rows[:N] @ F^T
    forces on rows[:N] = f @ F     forces on rows[N:] = (1/e) dexpm*(log F)[virial @ F^-T],

with virial = -V stress (eV) and dexpm* the adjoint of the Fréchet derivative of the matrix exponential
(ASE sums the nine directional derivatives; the same number as a vector-Jacobian product). log F is
read from the rows (rows[N:] / e - log(c) I) rather than recomputed with logm: the same matrix, and
JAX has no logm. Only ASE's defaults are covered (all six strain components, no pressure, neither
hydrostatic nor constant-volume).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def initial_cell_rows(n_atoms: np.ndarray) -> np.ndarray:
    """The cell rows of undeformed systems (F = I): e * log(c) * I, (S, 3, 3)."""
    n = np.asarray(n_atoms, float)
    return (n * np.log(n))[:, None, None] * np.eye(3)


def deformation_from_rows(cell_rows, n_atoms):
    """F (S, 3, 3) from the cell rows (S, 3, 3) of systems with n_atoms (S,) atoms."""
    e = c = n_atoms.astype(cell_rows.dtype)[:, None, None]
    return jax.vmap(jax.scipy.linalg.expm)(cell_rows / e) / c


def positions_and_cells(atom_rows, cell_rows, original_cells, n_atoms, system_index):
    """Cartesian positions (A, 3) Å and cells (S, 3, 3) Å from the optimizer rows."""
    deform = deformation_from_rows(cell_rows, n_atoms)
    cells = jnp.einsum("sab,scb->sac", original_cells, deform)  # original @ F^T
    positions = jnp.einsum("na,nba->nb", atom_rows, deform[system_index])  # r = x @ F^T
    return positions, cells


def generalized_forces(forces, stress, cells, cell_rows, n_atoms, system_index):
    """Forces on the atom rows (A, 3) and on the cell rows (S, 3, 3), eV/Å, from atomic forces (A, 3) eV/Å
    and stress (S, 3, 3) eV/Å^3 at these cells."""
    e = c = n_atoms.astype(cell_rows.dtype)[:, None, None]
    log_deform = cell_rows / e - jnp.log(c) * jnp.eye(3, dtype=cell_rows.dtype)
    deform = jax.vmap(jax.scipy.linalg.expm)(log_deform)
    volumes = jnp.abs(jnp.linalg.det(cells))[:, None, None]
    virial = -volumes * stress
    unit_cell_gradient = jnp.einsum("sab,scb->sac", virial, jnp.linalg.inv(deform))  # virial @ F^-T
    _, adjoint = jax.vjp(jax.vmap(jax.scipy.linalg.expm), log_deform)
    (cell_force,) = adjoint(unit_cell_gradient)
    atom_force = jnp.einsum("na,nab->nb", forces, deform[system_index])  # f @ F
    return atom_force, cell_force / e
