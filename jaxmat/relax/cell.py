"""ASE's cell filters in JAX, for many systems at once: atoms and cells relaxed together.

The optimizer moves, per system of N atoms, N + 3 rows: atom positions in the undeformed cell and three
cell rows. With F the deformation gradient (cell = original cell @ F^T):

- ``frechet`` (ASE's FrechetCellFilter; c = e = N, ASE's ``cell_factor`` and ``exp_cell_factor``)::

    rows[:N] = r @ F^-T            rows[N:] = e * logm(c F)
    F = expm(rows[N:] / e) / c     forces on rows[N:] = (1/e) dexpm*(log F)[virial @ F^-T]

  with dexpm* the adjoint of the Fréchet derivative of the matrix exponential (ASE sums the nine
  directional derivatives; the same number as a vector-Jacobian product).
- ``exp`` (ASE's ExpCellFilter as ASE 3.23+ has it): rows[N:] = F (cell factor 1); the cell forces are
  L(log F, virial expm(-log F)) with L the Fréchet derivative of expm, off-diagonals symmetrised, or
  the virial itself where the two point alike (cosine > 0.8), as in ASE.

Both: forces on rows[:N] = f @ F, virial = -V (stress + p I) (eV; p the scalar pressure), replaced by
its trace / 3 on the diagonal with ``hydrostatic_strain``, times the strain ``mask``, trace-free with
``constant_volume``; a mask keeps F = I + (F - I) * mask as ASE's set_positions does. ASE reads the rows
back from the atoms after every step (:func:`read_rows`): that matters where constraints or a mask
changed what the optimizer set.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("frechet", "exp")


@dataclass(frozen=True)
class CellFilter:
    """How cells relax: ``kind`` "frechet" (default) or "exp"; ``pressure`` in GPa (the enthalpy E + pV is
    minimised); ``hydrostatic_strain`` / ``constant_volume`` as in ASE; ``mask``: six Voigt flags
    (xx, yy, zz, yz, xz, xy) of the strain components that relax, or None for all."""

    kind: str = "frechet"
    pressure: float = 0.0
    hydrostatic_strain: bool = False
    constant_volume: bool = False
    mask: tuple | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"cell filter must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not np.isfinite(self.pressure):
            raise ValueError(f"cell filter pressure must be a finite number of GPa, not {self.pressure!r}")
        if self.mask is not None:
            if len(self.mask) != 6:
                raise ValueError(f"cell mask needs six Voigt flags (xx, yy, zz, yz, xz, xy), not {self.mask!r}")
            object.__setattr__(self, "mask", tuple(bool(m) for m in self.mask))

    @property
    def scalar_pressure(self) -> float:
        """The pressure in eV/Å^3 (ASE's ``scalar_pressure``)."""
        from ase.units import GPa

        return float(self.pressure) * GPa

    def mask3x3(self) -> np.ndarray:
        if self.mask is None:
            return np.ones((3, 3))
        xx, yy, zz, yz, xz, xy = self.mask
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], float)

    # --- batched arrays (both loops): cell rows (S, 3, 3), deformation gradients, forces ---

    def initial_cell_rows(self, n_atoms) -> np.ndarray:
        """The cell rows of undeformed systems (F = I), (S, 3, 3)."""
        n = np.asarray(n_atoms, float)
        if self.kind == "exp":
            return np.tile(np.eye(3), (len(n), 1, 1))
        return (n * np.log(n))[:, None, None] * np.eye(3)

    def deformation_from_rows(self, cell_rows, n_atoms):
        """F (S, 3, 3) as ASE's set_positions makes it (mask applied) from the cell rows of systems with n_atoms atoms."""
        if self.kind == "exp":
            deform = cell_rows
        else:
            e = c = n_atoms.astype(cell_rows.dtype)[:, None, None]
            deform = jax.vmap(jax.scipy.linalg.expm)(cell_rows / e) / c
        if self.mask is None:
            return deform
        eye = jnp.eye(3, dtype=cell_rows.dtype)
        return eye + (deform - eye) * jnp.asarray(self.mask3x3(), cell_rows.dtype)

    def positions_and_cells(self, atom_rows, cell_rows, original_cells, n_atoms, system_index):
        """Cartesian positions (A, 3) Å and cells (S, 3, 3) Å from the optimizer rows."""
        deform = self.deformation_from_rows(cell_rows, n_atoms)
        cells = jnp.einsum("sab,scb->sac", original_cells, deform)  # original @ F^T
        positions = jnp.einsum("na,nba->nb", atom_rows, deform[system_index])  # r = x @ F^T
        return positions, cells

    def read_rows(self, positions, cells, original_cells, n_atoms, system_index):
        """The rows ASE's get_positions reads back from positions (A, 3) and cells (S, 3, 3): (atom rows, cell rows)."""
        deform = jnp.swapaxes(jnp.linalg.solve(original_cells, cells), 1, 2)  # F = (original^-1 cell)^T
        atom_rows = jnp.einsum("nb,nab->na", positions, jnp.linalg.inv(deform)[system_index])  # r @ F^-T
        if self.kind == "exp":
            return atom_rows, deform
        n = n_atoms.astype(cells.dtype)[:, None, None]
        return atom_rows, n * (jnp.log(n) * jnp.eye(3, dtype=cells.dtype) + logm(deform))  # e logm(c F)

    def energy(self, energy, cells):
        """What the optimizer minimises (eV): the energy plus p V."""
        if not self.pressure:
            return energy
        return energy + self.scalar_pressure * jnp.abs(jnp.linalg.det(cells))

    def generalized_forces(self, forces, stress, cells, original_cells, cell_rows, n_atoms, system_index):
        """Forces on the atom rows (A, 3) and on the cell rows (S, 3, 3), eV/Å, from atomic forces (A, 3) eV/Å
        and stress (S, 3, 3) eV/Å^3 at these cells."""
        dtype = cells.dtype
        eye = jnp.eye(3, dtype=dtype)
        if self.kind == "frechet" and self.mask is None:  # log F straight from the rows (the same matrix, no logm)
            e = c = n_atoms.astype(dtype)[:, None, None]
            log_deform = cell_rows / e - jnp.log(c) * eye
            deform = jax.vmap(jax.scipy.linalg.expm)(log_deform)
        else:  # ASE reads F from the cell
            deform = jnp.swapaxes(jnp.linalg.solve(original_cells, cells), 1, 2)
            log_deform = logm(deform)
        volumes = jnp.abs(jnp.linalg.det(cells))[:, None, None]
        virial = -volumes * (stress + self.scalar_pressure * eye)
        if self.hydrostatic_strain:
            virial = jnp.trace(virial, axis1=1, axis2=2)[:, None, None] / 3.0 * eye
        if self.mask is not None:
            virial = virial * jnp.asarray(self.mask3x3(), dtype)
        atom_force = jnp.einsum("na,nab->nb", forces, deform[system_index])  # f @ F
        if self.kind == "exp":
            cell_force = exp_cell_force(virial, log_deform)
        else:
            e = n_atoms.astype(dtype)[:, None, None]
            unit_cell_gradient = jnp.einsum("sab,scb->sac", virial, jnp.linalg.inv(deform))  # virial @ F^-T
            _, adjoint = jax.vjp(jax.vmap(jax.scipy.linalg.expm), log_deform)
            (cell_force,) = adjoint(unit_cell_gradient)
            cell_force = cell_force / e
        if self.constant_volume:
            cell_force = cell_force - jnp.trace(cell_force, axis1=1, axis2=2)[:, None, None] / 3.0 * eye
        return atom_force, cell_force


def exp_cell_force(virial, log_deform):
    """ExpCellFilter's forces on its cell rows (S, 3, 3) eV: L(U, virial expm(-U)) symmetrised, or the virial
    where the two agree (all close, or cosine > 0.8), as ASE chooses."""
    zeros = jnp.zeros_like(virial)
    block = -jnp.einsum("sab,sbc->sac", virial, jax.vmap(jax.scipy.linalg.expm)(-log_deform))
    y = jnp.concatenate([jnp.concatenate([log_deform, block], 2), jnp.concatenate([zeros, log_deform], 2)], 1)
    exact = -jax.vmap(jax.scipy.linalg.expm)(y)[:, :3, 3:]
    off = 1.0 - jnp.eye(3, dtype=virial.dtype)
    exact = exact * (1.0 - off) + 0.5 * (exact + jnp.swapaxes(exact, 1, 2)) * off
    same = jnp.all(jnp.isclose(exact, virial), axis=(1, 2))
    cosine = jnp.sum(exact * virial, axis=(1, 2)) / jnp.sqrt(jnp.sum(exact**2, axis=(1, 2)) * jnp.sum(virial**2, axis=(1, 2)))
    return jnp.where((same | (cosine > 0.8))[:, None, None], virial, exact)


def logm(a, roots: int = 2, terms: int = 16):
    """Principal matrix logarithm of (S, 3, 3) matrices near the identity (deformation gradients): ``roots``
    square roots (Denman-Beavers), then 2 atanh((A - I)(A + I)^-1) as a series (1e-15 for |A - I| < 0.5)."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)

    def sqrtm(m):
        def step(_, yz):
            y, z = yz
            return 0.5 * (y + jnp.linalg.inv(z)), 0.5 * (z + jnp.linalg.inv(y))

        return jax.lax.fori_loop(0, 8, step, (m, jnp.broadcast_to(eye, m.shape)))[0]

    for _ in range(roots):
        a = sqrtm(a)
    z = jnp.linalg.solve(a + eye, a - eye)  # commutes with a
    z2, power, total = z @ z, z, z
    for k in range(1, terms):
        power = power @ z2
        total = total + power / (2 * k + 1)
    return 2.0 ** (roots + 1) * total
