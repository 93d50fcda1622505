"""Pure-JAX pair potentials (jax-md's Lennard-Jones and Morse) on batches of periodic systems.

Neighbour pairs (with periodic shifts, so cells narrower than twice the cutoff work) come from
:mod:`jaxmat.forcefields.neighbors`; energies, forces (-dE/dx) and stress (strain derivative) are
computed by one jit-compiled JAX function. Meant for tests and fast experiments. The same energy on
the neighbour-matrix layout (:meth:`PairPotential.device_model`) runs inside the device relaxation loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import energy as jmd_energy

from jaxmat.forcefields.base import ForceFieldOutput, SystemBatch
from jaxmat.forcefields.neighbors import pair_list, pair_shift_vectors, slot_shifts
from jaxmat.forcefields.strain import deformation, energies_forces_stress
from jaxmat.padding import pad


def _pad(array, size, value=0):
    """array padded to ``size`` rows."""
    return pad(array, size - len(array), value)


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

    supports_device_loop = True

    def device_species(self, numbers) -> np.ndarray:
        """Per-atom species indices for :meth:`device_model` (unused by a pair potential)."""
        return np.zeros(len(numbers), np.int32)

    def device_settings(self) -> tuple:
        """Nothing besides params changes :meth:`device_model`'s program (its pair function is fixed at construction)."""
        return ()

    def device_model(self):
        """(params, energy_forces_stress(params, graph)) on the neighbour-matrix layout of the device loop
        (graph: positions, cells, species, system_index, neighbors, translations, mask, outgoing)."""

        phi, far = self.phi, 2.0 * self.cutoff  # not self: the compiled loop keeps this function

        def evaluate(params, graph):
            n_systems = graph["cells"].shape[0]
            system_index, neighbors, mask = graph["system_index"], graph["neighbors"], graph["mask"]

            def total_energy(positions, strain):
                deform = deformation(strain)[system_index]
                pos = jnp.einsum("na,nab->nb", positions, deform)
                shift = jnp.einsum("nka,nab->nkb", slot_shifts(graph["translations"], graph["cells"], system_index), deform)
                vectors = jnp.where(mask[..., None], pos[:, None, :] - pos[neighbors] + shift, far)  # padding beyond the cutoff
                r = jnp.linalg.norm(vectors, axis=-1)
                e_atom = 0.5 * jnp.sum(jnp.where(mask, phi(r), 0.0), axis=1)
                return jax.ops.segment_sum(e_atom, system_index, n_systems)

            return energies_forces_stress(total_energy, graph["positions"], graph["cells"], n_systems)

        return {}, evaluate

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput:
        i, j, translations, pair_system = pair_list(batch, self.cutoff)
        shifts = pair_shift_vectors(batch, translations, pair_system)
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
