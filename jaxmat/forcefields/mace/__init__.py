"""MACE in JAX: the model (e3nn-jax spherical harmonics, imported mace-torch weights), conversion from
mace-torch, checkpoints without torch, and a batched force field for the relaxation engine."""

from jaxmat.forcefields.mace.convert import UnsupportedMACEError, from_torch
from jaxmat.forcefields.mace.model import energy_forces_stress, node_energies

__all__ = ["UnsupportedMACEError", "from_torch", "energy_forces_stress", "node_energies"]
