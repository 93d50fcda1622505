"""MACE's radial parts as pure functions on edges: radial bases, distance transforms, the ZBL pair repulsion.

Each follows its mace-torch counterpart (``mace/modules/radial.py``) number for number. Edges are flat
(E,) arrays of lengths (Å); the element-dependent parts take each edge's sender and receiver species (E,),
indices into the model's element list, and per-species tables (covalent radii in Å, atomic numbers) that the
converter reads from the torch module's own buffers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmat.forcefields.mace.ops import bessel_basis, polynomial_cutoff


def chebyshev_t(x, n_max: int):
    """T_1(x) .. T_n_max(x) (E, n_max) as torch.special.chebyshev_polynomial_t computes them: the three-term
    recurrence, except cos(n acos x) for n > 6 where |x| < 1."""
    previous, current = jnp.ones_like(x), x
    out = [current]
    for _ in range(2, n_max + 1):
        previous, current = current, 2.0 * x * current - previous
        out.append(current)
    recurrence = jnp.stack(out, axis=-1)
    n = jnp.arange(1, n_max + 1, dtype=x.dtype)
    inside = (jnp.abs(x) < 1.0)[:, None] & (n > 6)
    trigonometric = jnp.cos(n * jnp.arccos(jnp.clip(x, -1.0, 1.0))[:, None])
    return jnp.where(inside, trigonometric, recurrence)


def radial_basis(lengths, spec: dict):
    """The radial basis (E, n_basis) of (possibly transformed) edge lengths (E,) Å. spec: {"type": "bessel",
    "frequencies", "prefactor"} | {"type": "gaussian", "centres", "coefficient"} | {"type": "chebyshev", "num_basis"}."""
    kind = spec["type"]
    if kind == "bessel":
        return bessel_basis(lengths, jnp.asarray(spec["frequencies"], lengths.dtype), spec["prefactor"])
    if kind == "gaussian":
        centres = jnp.asarray(spec["centres"], lengths.dtype)
        return jnp.exp(spec["coefficient"] * (lengths[:, None] - centres) ** 2)
    if kind == "chebyshev":
        # torch.special.chebyshev_polynomial_t has no derivative: mace-torch's forces and stress leave out this
        # basis's dependence on the lengths, and so do these (faithful, not conservative)
        return jax.lax.stop_gradient(chebyshev_t(lengths, int(spec["num_basis"])))
    raise ValueError(f"unknown radial basis {kind!r}")


def transform_distances(lengths, spec: dict, radii_sender, radii_receiver):
    """mace-torch's distance transforms of edge lengths (E,) Å, with each edge's covalent radii (E,) Å.
    spec: {"kind": "agnesi", "a", "p", "q"} or {"kind": "soft", "alpha"}."""
    if spec["kind"] == "agnesi":
        r_over_r0 = lengths / (0.5 * (radii_sender + radii_receiver))
        return 1.0 / (1.0 + spec["a"] * r_over_r0 ** spec["q"] / (1.0 + r_over_r0 ** (spec["q"] - spec["p"])))
    if spec["kind"] == "soft":
        r0 = radii_sender + radii_receiver
        p0, p1 = 0.75 * r0, (4.0 / 3.0) * r0
        switch = 0.5 * (1.0 + jnp.tanh(spec["alpha"] / (p1 - p0) * (lengths - 0.5 * (p0 + p1))))
        return p0 + (lengths - p0) * switch
    raise ValueError(f"unknown distance transform {spec['kind']!r}")


def zbl_edge_energies(lengths, spec: dict, z_sender, z_receiver, radii_sender, radii_receiver):
    """Half the ZBL screened-nuclear repulsion of each edge (E,) eV, under a polynomial envelope that ends at
    the sum of the two covalent radii; summed over a receiver's edges it is mace-torch's ZBLBasis node energy.
    z_*: atomic numbers (E,) as floats; spec: {"c" (4,), "a_exp", "a_prefactor", "p"}."""
    c = spec["c"]
    a = spec["a_prefactor"] * 0.529 / (z_sender ** spec["a_exp"] + z_receiver ** spec["a_exp"])
    r_over_a = lengths / a
    phi = (c[0] * jnp.exp(-3.2 * r_over_a) + c[1] * jnp.exp(-0.9423 * r_over_a)
           + c[2] * jnp.exp(-0.4028 * r_over_a) + c[3] * jnp.exp(-0.2016 * r_over_a))
    energy = (14.3996 * z_sender * z_receiver) / lengths * phi
    return 0.5 * energy * polynomial_cutoff(lengths, (radii_sender + radii_receiver)[:, None], spec["p"])[:, 0]
