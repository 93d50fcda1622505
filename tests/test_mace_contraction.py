"""The product basis in blocks of monomials (product_basis.symmetric_contraction(block=...), MACEJax(contraction_block=...))
gives the one-monomial loop's numbers, forward and backward."""

import mace  # noqa: F401  -- before e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace import product_basis
from jaxmat.forcefields.mace.convert import from_torch
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.testing import build_small_mace

pytestmark = pytest.mark.usefixtures("x64")
HEO_NUMBERS = [8, 12, 27, 28, 29, 30]


@pytest.fixture(scope="module")
def small_mace(x64):
    return build_small_mace(HEO_NUMBERS, seed=21, hidden_irreps="16x0e+16x1o", max_ell=3, correlation=3, r_max=5.0)


@pytest.mark.parametrize("block", [7])  # not dividing the monomial counts (a padded last block)
def test_blocked_contraction_equals_the_loop_forward_and_backward(small_mace, block):
    config, params = from_torch(small_mace)
    product, weights = config["products"][0], params["products"][0]["weights"]
    n_atoms, n_components = 37, product["contractions"][0][0]["n_a"]
    channels = np.asarray(weights[0][0]).shape[-1]
    rng = np.random.default_rng(block)
    x = jnp.asarray(rng.normal(size=(n_atoms, n_components, channels)))
    species = jnp.asarray(rng.integers(0, len(HEO_NUMBERS), n_atoms).astype(np.int32))
    cotangent = [jnp.asarray(rng.normal(size=(n_atoms, 2 * l + 1, channels))) for l in range(len(weights))]

    def run(b):
        contract = lambda x, w: product_basis.symmetric_contraction(x, species, product["contractions"], w, b)  # noqa: E731
        out, vjp = jax.vjp(contract, x, weights)
        return out, vjp(cotangent[: len(out)])

    (loop_out, (loop_dx, loop_dw)), (out, (dx, dw)) = run(1), run(block)
    assert len(out) == len(loop_out) >= 2
    for a, b in zip(out, loop_out):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, loop_dx, rtol=1e-12, atol=1e-11)
    for a, b in zip(jax.tree_util.tree_leaves(dw), jax.tree_util.tree_leaves(loop_dw)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-11)
    assert float(jnp.max(jnp.abs(loop_dx))) > 0.1  # a real gradient, not zeros on both sides


def test_force_field_with_blocks_gives_the_same_energies_forces_and_stress(small_mace):
    batch = batch_from_atoms([rocksalt_heo(1, seed=s) for s in range(2)])
    exact = MACEJax.from_torch(small_mace)(batch, compute_stress=True)
    blocked = MACEJax.from_torch(small_mace, contraction_block=32)(batch, compute_stress=True)
    np.testing.assert_allclose(blocked.energy, exact.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(blocked.forces, exact.forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(blocked.stress, exact.stress, rtol=0, atol=1e-12)
    assert np.abs(exact.forces).max() > 1e-3
    with pytest.raises(ValueError, match="contraction_block"):
        MACEJax.from_torch(small_mace, contraction_block=0)
