"""The soft contrastive loss against a hand computation, masking, options and overflow safety."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat.polysrl.loss import pair_distances, sample_embeddings, soft_contrastive_loss


def hand_loss(z, s, mu, logsigma, same, a, b, beta):
    """Direct transcription of the reference formulas with Python floats."""
    n, k, _ = z.shape
    total_pos = total_neg = 0.0
    for i in range(n):
        for j in range(n):
            m = 1.0 if same[i][j] else -1.0
            probs = []
            for q in range(k):
                d = math.sqrt(sum((z[i, q, t] - s[j, t]) ** 2 for t in range(z.shape[2])) + 1e-6)
                logit = -a * d + b
                probs.append(math.exp(m * logit) / (math.exp(logit) + math.exp(-logit)))
            nll = -math.log(sum(probs) / k)
            if m > 0:
                total_pos += nll
            else:
                total_neg += nll
    zbar = z.mean(axis=1)
    kl = -0.5 * float(np.sum(1 + logsigma - zbar**2 - np.exp(logsigma)))
    return total_pos, total_neg, kl, total_pos + total_neg + beta * kl


def small_case(seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(3, 2))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    logsigma = rng.normal(scale=0.3, size=(3, 2)) - 1.0
    eps = rng.normal(size=(3, 2, 2))
    s = rng.normal(size=(3, 2))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    return mu, logsigma, eps, s


def test_matches_hand_computation(x64):
    mu, logsigma, eps, s = small_case()
    z = np.asarray(sample_embeddings(jnp.asarray(mu), jnp.asarray(logsigma), jnp.asarray(eps)))
    ids = jnp.array([0, 1, 0])  # rows 0 and 2 are polymorphs of one formula
    same = [[ids[i] == ids[j] for j in range(3)] for i in range(3)]
    a, b, beta = 2.0, 1.0, 0.1
    parts = soft_contrastive_loss(jnp.asarray(z), jnp.asarray(s), jnp.asarray(mu), jnp.asarray(logsigma), ids, jnp.ones(3, bool), b, a, beta)
    pos, neg, kl, total = hand_loss(z, s, mu, logsigma, same, a, b, beta)
    assert float(parts.positive) == pytest.approx(pos, rel=1e-12)
    assert float(parts.negative) == pytest.approx(neg, rel=1e-12)
    assert float(parts.kl) == pytest.approx(kl, rel=1e-12)
    assert float(parts.total) == pytest.approx(total, rel=1e-12)
    assert neg > 0 and pos > 0


def test_padding_rows_do_not_change_the_loss(x64):
    mu, logsigma, eps, s = small_case(1)
    args = lambda arr, fill: jnp.asarray(np.concatenate([arr, np.full((2,) + arr.shape[1:], fill)]))
    z = sample_embeddings(jnp.asarray(mu), jnp.asarray(logsigma), jnp.asarray(eps))
    ref = soft_contrastive_loss(z, jnp.asarray(s), jnp.asarray(mu), jnp.asarray(logsigma), jnp.array([0, 1, 2]), jnp.ones(3, bool), 1.0, 2.0)
    z_pad = jnp.concatenate([z, 7.0 * jnp.ones((2, 2, 2))])
    padded = soft_contrastive_loss(
        z_pad, args(s, 3.0), args(mu, 5.0), args(logsigma, 2.0), jnp.array([0, 1, 2, -1, -2]),
        jnp.array([True, True, True, False, False]), 1.0, 2.0,
    )
    assert float(padded.total) == pytest.approx(float(ref.total), rel=1e-14)


def test_mean_reduction_and_log_std_kl(x64):
    mu, logsigma, eps, s = small_case(2)
    z = sample_embeddings(jnp.asarray(mu), jnp.asarray(logsigma), jnp.asarray(eps))
    common = (z, jnp.asarray(s), jnp.asarray(mu), jnp.asarray(logsigma), jnp.array([0, 1, 2]), jnp.ones(3, bool), 1.0, 2.0)
    summed = soft_contrastive_loss(*common, kl_beta=0.0)
    mean = soft_contrastive_loss(*common, kl_beta=0.0, reduction="mean")
    assert float(mean.contrastive) == pytest.approx(float(summed.contrastive) / 9, rel=1e-14)
    consistent = soft_contrastive_loss(*common, kl_beta=1.0, kl="log_std")
    expected = 0.5 * np.sum(np.exp(2 * logsigma) + mu**2 - 1 - 2 * logsigma)  # KL(N(mu, sigma^2) || N(0, 1))
    assert float(consistent.kl) == pytest.approx(expected, rel=1e-12)


def test_no_overflow_at_the_logsigma_clip_in_float32():
    """log-sigma at the clip (40) gives spreads ~2e17: sums must stay finite in float32, gradients too."""
    rng = np.random.default_rng(0)
    n, k, d = 64, 8, 200
    mu = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    logsigma = jnp.full((n, d), 40.0, jnp.float32)
    eps = jnp.asarray(rng.normal(size=(n, k, d)), jnp.float32)
    s = jnp.asarray(rng.normal(size=(n, d)) / np.sqrt(d), jnp.float32)

    def total(mu, logsigma, s):
        z = sample_embeddings(mu, logsigma, eps)
        return soft_contrastive_loss(z, s, mu, logsigma, jnp.arange(n), jnp.ones(n, bool), 20.0, 20.0).total

    value, grads = jax.value_and_grad(total, argnums=(0, 1, 2))(mu, logsigma, s)
    assert np.isfinite(float(value)) and float(value) > 1e20
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    # a naive sum of squares over the batch (as in the KL) overflows float32 here
    assert not np.isfinite(float(jnp.sum(sample_embeddings(mu, logsigma, eps) ** 2)))


def test_pair_distances_match_direct_formula(x64):
    rng = np.random.default_rng(3)
    z, s = rng.normal(size=(4, 3, 5)) * 30, rng.normal(size=(6, 5))
    direct = np.sqrt(((z[:, None, :, :] - s[None, :, None, :]) ** 2).sum(-1) + 1e-6)
    np.testing.assert_allclose(np.asarray(pair_distances(jnp.asarray(z), jnp.asarray(s))), direct, rtol=1e-12)
