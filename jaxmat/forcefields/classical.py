"""Pure-JAX pair potentials (jax-md's Lennard-Jones and Morse) on batches of periodic systems.

Neighbour pairs (with periodic shifts, so cells narrower than twice the cutoff work) come from
vesin on the host; energies, forces (-dE/dx) and stress (strain derivative) are computed by one
jit-compiled JAX function. Meant for tests and fast experiments.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import energy as jmd_energy

from jaxmat.forcefields.base import ForceFieldOutput, SystemBatch
from jaxmat.forcefields.strain import deformation, energies_forces_stress


def neighbor_pairs_with_shifts(batch: SystemBatch, cutoff: float):
    """Full pair list over all systems: (i, j, shift vectors (P, 3) Å, system of each pair)."""
    from vesin import NeighborList

    calculator = NeighborList(cutoff=cutoff, full_list=True)
    pairs_i, pairs_j, shifts, systems = [], [], [], []
    for s in range(batch.n_systems):
        atoms = np.flatnonzero(batch.system_index == s)
        periodic = bool(batch.pbc[s].all())
        i, j, S = calculator.compute(batch.positions[atoms], batch.cells[s] if periodic else np.zeros((3, 3)), periodic, "ijS")
        pairs_i.append(atoms[i]), pairs_j.append(atoms[j])
        shifts.append(S.astype(np.float64) @ batch.cells[s]), systems.append(np.full(len(i), s))
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)
    return cat(pairs_i, (0,)).astype(np.int32), cat(pairs_j, (0,)).astype(np.int32), cat(shifts, (0, 3)), cat(systems, (0,)).astype(np.int32)


def _pad(array, size, value=0):
    extra = size - len(array)
    return np.concatenate([array, np.full((extra,) + array.shape[1:], value, array.dtype)])


class PairPotential:
    """E = 1/2 sum_{i != j} phi(r_ij) with a smooth cutoff; phi from jax_md.energy."""

    supported_numbers = None

    def __init__(self, pair_function, cutoff: float, onset: float | None = None):
        self.cutoff = float(cutoff)
        onset = 0.8 * self.cutoff if onset is None else onset
        self.phi = jmd_energy.multiplicative_isotropic_cutoff(pair_function, onset, self.cutoff)
        self._evaluate = jax.jit(self._energy_forces_stress, static_argnums=(5,))

    def _energy_forces_stress(self, positions, cells, i, j, shift_frac, n_systems, pair_system, pair_mask, system_index):
        def total_energy(positions, strain):
            deform = deformation(strain)  # (S, 3, 3)
            pos = jnp.einsum("na,nab->nb", positions, deform[system_index])
            shift = jnp.einsum("pa,pab->pb", shift_frac, deform[pair_system])
            r = jnp.linalg.norm(pos[j] + shift - pos[i] + jnp.where(pair_mask, 0.0, 1.0)[:, None], axis=-1)
            e_pair = jnp.where(pair_mask, self.phi(r), 0.0)
            return 0.5 * jax.ops.segment_sum(e_pair, pair_system, n_systems)

        return energies_forces_stress(total_energy, positions, cells, n_systems)

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput:
        i, j, shifts, pair_system = neighbor_pairs_with_shifts(batch, self.cutoff)
        size = max(64, int(2 ** np.ceil(np.log2(len(i) + 1))))  # few compiled shapes
        mask = _pad(np.ones(len(i), bool), size, False)
        energy, forces, stress = self._evaluate(
            jnp.asarray(batch.positions), jnp.asarray(batch.cells), _pad(i, size), _pad(j, size), _pad(shifts, size),
            batch.n_systems, _pad(pair_system, size), mask, jnp.asarray(batch.system_index),
        )
        return ForceFieldOutput(np.asarray(energy), np.asarray(forces), np.asarray(stress) if compute_stress else None)


def lennard_jones(sigma: float = 1.0, epsilon: float = 1.0, cutoff: float = 2.5) -> PairPotential:
    """Lennard-Jones 4 eps [(sigma/r)^12 - (sigma/r)^6] (jax_md.energy.lennard_jones), smoothly cut off."""
    return PairPotential(functools.partial(jmd_energy.lennard_jones, sigma=sigma, epsilon=epsilon), cutoff)


def morse(sigma: float = 1.0, epsilon: float = 1.0, alpha: float = 5.0, cutoff: float = 2.5) -> PairPotential:
    """Morse eps [(1 - exp(-alpha (r - sigma)))^2 - 1] (jax_md.energy.morse), smoothly cut off."""
    return PairPotential(functools.partial(jmd_energy.morse, sigma=sigma, epsilon=epsilon, alpha=alpha), cutoff)
