"""A species pair energy on the neighbour-matrix layout: E = 1/2 sum_{i != j, r_ij < cutoff} J[s_i, s_j] (eV).

A lattice model (an Ising-like cluster expansion of first-shell pairs) with the ``device_model()`` interface
of the JAX force fields: it depends on the arrangement of species only, so swap Monte Carlo on it can be
checked against exact Boltzmann averages over every arrangement of a small cell (tests/test_anneal_exact.py).
No forces (zeros): it is for swaps on fixed geometries.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.neighbors import slot_shifts


class SpeciesPairEnergy:
    """J (E, E) eV between the elements ``numbers`` (E,) for pairs closer than ``cutoff`` Å."""

    supports_device_loop = False  # no forces: a sampler's energy, not a relaxation's

    def __init__(self, numbers, J, cutoff: float):
        self.numbers = [int(z) for z in numbers]
        self.J = np.asarray(J, float)
        self.r_max = self.cutoff = float(cutoff)
        self.supported_numbers = frozenset(self.numbers)

    def device_species(self, numbers) -> np.ndarray:
        """Species indices into ``numbers`` (ValueError for another element)."""
        table = {z: k for k, z in enumerate(self.numbers)}
        missing = sorted({int(z) for z in numbers if int(z) not in table})
        if missing:
            raise ValueError(f"elements with atomic numbers {missing} are not in this pair model {self.numbers}")
        return np.array([table[int(z)] for z in numbers], np.int32)

    def device_model(self):
        """(J, evaluate(J, graph) -> (energy (S,) eV, zero forces, zero stress)) on the device loop's graph."""
        cutoff = self.cutoff

        def evaluate(J, graph):
            positions, index, neighbors, mask = graph["positions"], graph["system_index"], graph["neighbors"], graph["mask"]
            n_systems = graph["cells"].shape[0]
            vectors = positions[:, None, :] - positions[neighbors] + slot_shifts(graph["translations"], graph["cells"], index)
            close = mask & (jnp.sum(vectors**2, axis=-1) < cutoff**2)
            species = graph["species"]
            pair = jnp.asarray(J, positions.dtype)[species[:, None], species[neighbors]]
            e_atom = 0.5 * jnp.sum(jnp.where(close, pair, 0.0), axis=1)
            energy = jnp.zeros(n_systems, positions.dtype).at[index].add(e_atom)
            return energy, jnp.zeros_like(positions), jnp.zeros((n_systems, 3, 3), positions.dtype)

        return self.J, evaluate
