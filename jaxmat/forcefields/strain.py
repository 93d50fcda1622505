"""Forces and stress of a batched JAX energy function by automatic differentiation.

A potential supplies ``energy_fn(positions, strain) -> (S,)`` eV, where ``strain`` (S, 3, 3) deforms
every system (positions and periodic shifts multiplied by :func:`deformation`); forces are -dE/dx
(eV/Å) and the stress is (1/V) dE/d(strain) (eV/Å^3), all from one backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def deformation(strain):
    """I + sym(strain), (S, 3, 3): row vectors times it are the deformed vectors."""
    return jnp.eye(3, dtype=strain.dtype) + 0.5 * (strain + jnp.swapaxes(strain, -1, -2))


def energies_forces_stress(energy_fn, positions, cells, n_systems: int):
    """(energies (S,) eV, forces (N, 3) eV/Å, stress (S, 3, 3) eV/Å^3) of energy_fn at zero strain."""

    def total(p, s):
        energies = energy_fn(p, s)
        return jnp.sum(energies), energies

    strain = jnp.zeros((n_systems, 3, 3), positions.dtype)
    (_, energies), (grad_pos, grad_strain) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(positions, strain)
    volumes = jnp.abs(jnp.linalg.det(cells))
    return energies, -grad_pos, grad_strain / volumes[:, None, None]
