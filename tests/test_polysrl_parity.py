"""Number-for-number parity with the PolySRL reference code (float64), from ../shared/reference/."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import shared_file
from reference_fixture import fixture_batch, fixture_eps, fixture_params


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(scope="module")
def reference(x64):
    return np.load(shared_file("reference/polysrl_full_reference.npz"))


@pytest.fixture(scope="module")
def first_step(reference):
    from jaxmat.polysrl.model import ModelConfig, loss_with_noise

    config = ModelConfig(dtype="float64")
    batch, params, eps = fixture_batch(reference), fixture_params(reference), fixture_eps(reference)
    (loss, (parts, outputs)), grads = jax.jit(jax.value_and_grad(loss_with_noise, has_aux=True), static_argnums=1)(
        params, config, batch, eps
    )
    return config, batch, params, eps, loss, parts, outputs, grads


def test_forward_matches_reference(reference, first_step):
    _, _, _, _, loss, parts, outputs, _ = first_step
    n = len(reference["formulas"])
    assert np.max(np.abs(outputs["mu"][:n] - reference["mu"])) < 1e-8
    assert np.max(np.abs(outputs["logsigma"][:n] - reference["logsigma"])) < 1e-8
    assert np.max(np.abs(outputs["structure"][:n] - reference["str_emb"])) < 1e-8
    assert np.max(np.abs(outputs["z"][:n] - reference["z"])) < 1e-8
    assert rel_err(loss, reference["loss_total"]) < 1e-9
    assert rel_err(parts.contrastive, reference["loss_soft_con"]) < 1e-9
    assert rel_err(parts.kl, reference["kl"]) < 1e-9
    assert float(parts.negative) == float(reference["loss_neg"])
    assert rel_err(parts.distance_mean, reference["stat_distance_mean"]) < 1e-9


def test_gradients_match_reference(reference, first_step):
    from jaxmat.polysrl.reference import full_mapping, reference_from_tree

    grads = reference_from_tree(jax.tree_util.tree_map(np.asarray, first_step[-1]), list(full_mapping()))
    errors = {key: rel_err(value, reference["grad." + key]) for key, value in grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, (worst, errors[worst])
    from jaxmat.polysrl.training import global_norm

    assert rel_err(global_norm(first_step[-1]), reference["grad_norm_total"]) < 1e-9


def test_loss_after_one_clipped_adam_step(reference, first_step):
    from jaxmat.polysrl.model import loss_with_noise
    from jaxmat.polysrl.training import make_optimizer

    config, batch, params, eps, _, _, _, grads = first_step
    optimizer = make_optimizer(lr=float(reference["lr"]), max_grad_norm=float(reference["max_grad_norm"]))
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    stepped = optax.apply_updates(params, updates)
    assert rel_err(stepped["shift"], reference["adam1.loss.shift"]) < 1e-9
    assert rel_err(stepped["negative_scale"], reference["adam1.loss.negative_scale"]) < 1e-9
    loss, (parts, outputs) = jax.jit(loss_with_noise, static_argnums=1)(stepped, config, batch, eps)
    assert rel_err(loss, reference["step1.loss_total"]) < 1e-6
    assert rel_err(parts.kl, reference["step1.kl"]) < 1e-6
    n = len(reference["formulas"])
    assert np.max(np.abs(outputs["mu"][:n] - reference["step1.mu"])) < 1e-6


def test_loss_negative_branch_matches_reference(reference):
    """lossB: a loss-only case where negative pairs contribute, with gradients w.r.t. inputs and scalars."""
    from jaxmat.polysrl.loss import sample_embeddings, soft_contrastive_loss

    n = len(reference["formulas"])
    ids = jnp.asarray(np.unique(reference["formulas"], return_inverse=True)[1])
    mask = jnp.ones(n, bool)

    def total(mu, logsigma, s, shift, scale):
        z = sample_embeddings(mu, logsigma, jnp.asarray(reference["eps"]))
        parts = soft_contrastive_loss(z, s, mu, logsigma, ids, mask, shift, scale)
        return parts.total, parts

    args = [jnp.asarray(reference[f"lossB.{k}"]) for k in ("mu", "logsigma", "str_emb")]
    args += [jnp.asarray(reference["lossB.shift"][0]), jnp.asarray(reference["lossB.negative_scale"][0])]
    (loss, parts), grads = jax.value_and_grad(total, argnums=(0, 1, 2, 3, 4), has_aux=True)(*args)
    assert rel_err(loss, reference["lossB.loss_total"]) < 1e-9
    assert rel_err(parts.positive, reference["lossB.loss_pos"]) < 1e-9
    assert rel_err(parts.negative, reference["lossB.loss_neg"]) < 1e-9
    assert rel_err(parts.right_negative, reference["lossB.stat_right_neg"]) < 1e-12
    for grad, key in zip(grads, ("mu", "logsigma", "str_emb", "shift", "negative_scale")):
        assert rel_err(grad, reference[f"lossB.grad.{key}"]) < 1e-6, key


def test_crystal_graph_builder_matches_saved_distances(reference):
    """Our k-NN graph has the reference's per-atom neighbour distances (ties may pick other indices)."""
    from jaxmat.data.structures import make_record
    from jaxmat.polysrl.graphs.crystal import crystal_graph

    for i in range(len(reference["formulas"])):
        g = f"graph.{i:02d}."
        record = make_record(str(i), reference[g + "atomic_numbers"], reference[g + "cart_coords"], reference[g + "lattice"])
        graph = crystal_graph(record)
        ours = np.sort(graph.distances.reshape(-1, 12), axis=1)
        theirs = np.sort(reference[g + "edge_distance"].reshape(-1, 12), axis=1)
        np.testing.assert_allclose(ours, theirs, atol=1e-8)
        np.testing.assert_array_equal(graph.senders, reference[g + "edge_index"][0])


def test_stoichiometry_graph_matches_reference_inputs(reference):
    from jaxmat.polysrl.graphs.stoichiometry import stoichiometry_graph

    for i, formula in enumerate(reference["formulas"]):
        g = f"graph.{i:02d}."
        graph = stoichiometry_graph(str(formula))
        np.testing.assert_array_equal(graph.numbers, reference[g + "sto_x"])
        np.testing.assert_allclose(graph.counts, reference[g + "sto_weight"])
        np.testing.assert_array_equal(np.stack([graph.senders, graph.receivers]), reference[g + "sto_edge_index"])
        np.testing.assert_allclose(graph.features, reference["elem_attrs"][graph.numbers - 1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["MPBandG", "Infomax"])
def test_reference_checkpoint_embeddings(name):
    """Published stoichiometry encoders reproduce the reference code's embeddings to 1e-5, in float64, with
    JAX float64 off as in a user's process (the module's x64 fixture notwithstanding): the call scopes it."""
    from jaxmat.polysrl import import_reference_checkpoint

    expected = np.load(shared_file("reference/polysrl_reference_embeddings.npz"))
    with jax.enable_x64(False):
        embedder = import_reference_checkpoint(shared_file(f"reference/polysrl_{name}_stoich_encoder.pt"))
        mu, sigma = embedder.embed([str(f) for f in expected["formulas"]])
    assert mu.dtype == np.float64
    assert mu.shape == expected[f"{name}_mean"].shape
    assert np.max(np.abs(mu - expected[f"{name}_mean"])) < 1e-5
    assert np.all(sigma == 0.0)  # mean-only checkpoints are deterministic
