"""MACE's product basis (SymmetricContraction) as pure functions on coupled node features.

For one output irrep and one correlation order nu, MACE computes
    out[n, m, c] = sum_{a1..anu, k} U[m, a1..anu, k] x[n, a1, c] ... x[n, anu, c] W[species_n, k, c].
U is very sparse (e.g. 1,715 distinct nonzero products of 626,688 entries for 1o at nu=3 on 16
coupled components), so only its nonzero terms are visited. The weights are folded into one per
distinct monomial (290 for 1o at nu=3) and species, and the monomials are summed in a loop whose
every step is a few multiplies of contiguous (atoms x channels) rows; the gradient is the same loop
(custom VJP), so nothing of size (atoms x channels x terms) is materialised. Optionally (``block``)
several monomials per step: fewer, larger steps for accelerators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.mace.memo import IdentityMemo


def contraction_terms(U: np.ndarray, nu: int, l_out: int) -> dict:
    """The sparse form of MACE's U_nu (shape [(2l+1),] A x nu, K): distinct products with summed
    coefficients, grouped three ways - by output component m (forward), by the differentiated
    feature a (gradient w.r.t. x) and by weight index k (gradient w.r.t. W)."""
    if l_out == 0:
        U = U[None]
    m, *rest = np.nonzero(U)
    index, k = np.sort(np.stack(rest[:nu], axis=1), axis=1), rest[nu]
    keys = np.concatenate([m[:, None], index, k[:, None]], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)  # sorted by m first
    value = np.zeros(len(unique))
    np.add.at(value, inverse.ravel(), U[(m, *rest)])
    unique, value = unique[value != 0.0], value[value != 0.0]
    m, index, k = unique[:, 0], unique[:, 1:1 + nu], unique[:, 1 + nu]
    n_m, n_a, n_k = U.shape[0], U.shape[1], U.shape[-1]

    def grouped(group, n_groups, **arrays):
        order = np.argsort(group, kind="stable")
        out = {name: np.asarray(a)[order] for name, a in arrays.items()}
        out["start"] = np.searchsorted(group[order], np.arange(n_groups + 1))
        return out

    forward = grouped(m, n_m, value=value, index=index, k=k)
    # d/dx[a]: one term per position holding a (the other nu-1 features stay); equal terms merged
    rows = [np.concatenate([index[:, [p]], np.delete(index, p, axis=1), (m * n_k + k)[:, None]], axis=1) for p in range(nu)]
    rows, row_values = np.concatenate(rows), np.concatenate([value] * nu)
    unique_rows, inverse = np.unique(rows, axis=0, return_inverse=True)
    merged = np.zeros(len(unique_rows))
    np.add.at(merged, inverse.ravel(), row_values)
    backward_x = grouped(unique_rows[:, 0], n_a, value=merged, index=unique_rows[:, 1:nu], mk=unique_rows[:, nu])
    backward_w = grouped(k, n_k, value=value, index=index, m=m)
    return {"nu": nu, "n_m": n_m, "n_a": n_a, "n_k": n_k, "forward": forward, "grad_x": backward_x, "grad_w": backward_w}


def _folded_terms(terms) -> dict:
    """The forward terms of :func:`contraction_terms` with equal (m, a_1..a_nu) merged: P monomials, each
    feeding one output component m_p, whose weight is the sum over its terms of value_t * W[species, k_t, c]
    (``inverse`` maps every term to its monomial). 276 -> 77 (0e) and 1715 -> 290 (1o) at nu = 3."""
    f = terms["forward"]
    m = np.repeat(np.arange(terms["n_m"]), np.diff(f["start"]))
    keys = np.concatenate([m[:, None], np.asarray(f["index"]).reshape(len(m), -1)], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    # int32 indices whatever the x64 scope: with int64 ones, a float32 MACEJax traced after a float64 one built
    # from the same config failed inside JAX (int64/int32 TypeError; tests/test_mace_jax.py)
    return {"m": unique[:, 0].astype(np.int32), "index": unique[:, 1:].astype(np.int32),
            "inverse": inverse.ravel().astype(np.int32), "value": np.asarray(f["value"]),
            "k": np.asarray(f["k"]).astype(np.int32), "n_m": terms["n_m"]}


def _folded_weights(w, folded):
    """(P, S, C) weight of every monomial for every species: sum of value_t * w[s, k_t, c] over its terms."""
    contributions = jnp.asarray(folded["value"], w.dtype)[:, None, None] * jnp.swapaxes(w[:, folded["k"], :], 0, 1)  # (T, S, C)
    return jax.ops.segment_sum(contributions, folded["inverse"], len(folded["m"]))


def _with_vjp(forward_loop, backward):
    """{"custom": forward_loop(x, weights, species) as a custom-VJP function whose residuals are its arguments and
    whose gradient is backward(residuals, cotangent) -> (dx, dweights, None), "plain": forward_loop itself, which
    JAX differentiates in any mode (forward mode, Hessians), more slowly}."""
    contract = jax.custom_vjp(forward_loop)
    contract.defvjp(lambda x, weights, species: (forward_loop(x, weights, species), (x, weights, species)), backward)
    return {"custom": contract, "plain": forward_loop}


def _make_contraction(folded):
    """out[m] (M, N, C) = sum_p [m_p = m] W_p[species] prod_j x[a_jp] for x (A, N, C) with atoms x channels
    as the minor axes: one loop step per monomial, each a few (N, C) row operations in cache. Custom VJP:
    the backward is the same kind of loop (nothing of size atoms x channels x monomials is kept)."""
    nu, n_m, n_p = folded["index"].shape[1], folded["n_m"], len(folded["m"])
    m_of, a_of = folded["m"], folded["index"]

    def per_atom(weights, p, species):
        return jnp.take(weights[p], species, axis=0)  # (N, C)

    def forward_loop(x, weights, species):
        m_idx, a_idx = jnp.asarray(m_of), jnp.asarray(a_of)

        def step(p, out):
            product = per_atom(weights, p, species)
            for j in range(nu):
                product = product * x[a_idx[p, j]]
            return out.at[m_idx[p]].add(product)

        return jax.lax.fori_loop(0, n_p, step, jnp.zeros((n_m,) + x.shape[1:], x.dtype))

    def backward(residuals, g):
        x, weights, species = residuals
        m_idx, a_idx = jnp.asarray(m_of), jnp.asarray(a_of)

        def step_x(p, dx):
            g_w = g[m_idx[p]] * per_atom(weights, p, species)
            factors = [x[a_idx[p, j]] for j in range(nu)]
            for j in range(nu):
                term = g_w
                for other in range(nu):
                    if other != j:
                        term = term * factors[other]
                dx = dx.at[a_idx[p, j]].add(term)
            return dx

        one_hot = jax.nn.one_hot(species, weights.shape[1], dtype=x.dtype)  # (N, S)

        def step_w(p, dw):
            product = g[m_idx[p]]
            for j in range(nu):
                product = product * x[a_idx[p, j]]
            return dw.at[p].set(one_hot.T @ product)

        # two loops: when only forces are wanted the weight gradient is dead code and vanishes
        dx = jax.lax.fori_loop(0, n_p, step_x, jnp.zeros_like(x))
        dw = jax.lax.fori_loop(0, n_p, step_w, jnp.zeros_like(weights))
        return dx, dw, None

    return _with_vjp(forward_loop, backward)


def _make_blocked_contraction(folded, block: int):
    """The same contraction as :func:`_make_contraction`, ``block`` monomials per loop step: each step gathers
    (block, atoms, channels) factors and sums them into their output components (segment sums), so a
    290-monomial product takes ceil(290 / block) steps instead of 290 - fewer, larger kernels, for accelerators
    where each loop step is a launch; more memory traffic per step than the one-monomial loop (the faster form
    on CPU). Monomials padded to a multiple of ``block`` carry zero weight. Custom VJP of the same shape."""
    nu, n_m, n_p = folded["index"].shape[1], folded["n_m"], len(folded["m"])
    n_chunks = -(-n_p // block)
    pad = n_chunks * block - n_p
    m_table = np.concatenate([folded["m"], np.zeros(pad, np.int32)]).reshape(n_chunks, block)
    a_table = np.concatenate([folded["index"], np.zeros((pad, nu), np.int32)]).reshape(n_chunks, block, nu)

    def chunked(weights):  # (P, S, C) -> (chunks, block, S, C), zero weights on the padding monomials
        padded = jnp.concatenate([weights, jnp.zeros((pad,) + weights.shape[1:], weights.dtype)])
        return padded.reshape((n_chunks, block) + weights.shape[1:])

    def monomials(x, a_chunk, skip=None):
        product = None
        for j in range(nu):
            if j != skip:
                factor = x[a_chunk[:, j]]  # (block, N, C)
                product = factor if product is None else product * factor
        return product

    def forward_loop(x, weights, species):
        def step(out, chunk):
            w_chunk, m_chunk, a_chunk = chunk
            product = jnp.take(w_chunk, species, axis=1) * monomials(x, a_chunk)
            return out + jax.ops.segment_sum(product, m_chunk, n_m), None

        start = jnp.zeros((n_m,) + x.shape[1:], x.dtype)
        return jax.lax.scan(step, start, (chunked(weights), jnp.asarray(m_table), jnp.asarray(a_table)))[0]

    def backward(residuals, g):
        x, weights, species = residuals

        def step_x(dx, chunk):
            w_chunk, m_chunk, a_chunk = chunk
            g_w = g[m_chunk] * jnp.take(w_chunk, species, axis=1)
            for j in range(nu):
                others = monomials(x, a_chunk, skip=j)
                dx = dx.at[a_chunk[:, j]].add(g_w if others is None else g_w * others)
            return dx, None

        one_hot = jax.nn.one_hot(species, weights.shape[1], dtype=x.dtype)  # (N, S)

        def step_w(_, chunk):
            m_chunk, a_chunk = chunk
            return None, jnp.einsum("ns,gnc->gsc", one_hot, g[m_chunk] * monomials(x, a_chunk))

        tables = (jnp.asarray(m_table), jnp.asarray(a_table))
        dx = jax.lax.scan(step_x, jnp.zeros_like(x), (chunked(weights),) + tables)[0]
        dw = jax.lax.scan(step_w, None, tables)[1].reshape((n_chunks * block,) + weights.shape[1:])[:n_p]
        return dx, dw, None

    return _with_vjp(forward_loop, backward)


_CONTRACTION_FNS = IdentityMemo()


def _contraction_fn(terms, block: int = 1):
    """(folded terms, the custom-VJP contraction) of these terms, built once per terms object and block."""

    def build(terms):
        folded = _folded_terms(terms)
        return folded, (_make_contraction(folded) if block == 1 else _make_blocked_contraction(folded, block))

    return _CONTRACTION_FNS.get(build, terms, extra=(block,))


def checked_block(block, name: str = "block") -> int:
    """The monomials per loop step as an int; a ValueError naming ``name`` unless a whole number >= 1."""
    if int(block) != block or block < 1:
        raise ValueError(f"{name} must be a whole number >= 1, not {block!r}")
    return int(block)


def symmetric_contraction(x, species, contractions, weights, block: int = 1, custom_gradients: bool = True):
    """MACE SymmetricContraction. x (N, A, C): the coupled features stacked; contractions[o][nu-1]
    the :func:`contraction_terms` of output irrep o; weights[o][nu-1] (S, K, C). One (N, 2l+1, C) block
    per output irrep. block: monomials per loop step (1: the one-monomial loop, fastest on CPU; larger: fewer,
    larger steps, :func:`_make_blocked_contraction`); the same numbers up to summation order. custom_gradients=False:
    JAX's own derivatives of the loop instead of the hand-written VJP (for forward mode and second derivatives)."""
    block = checked_block(block)
    x_t = jnp.moveaxis(x, 1, 0)  # (A, N, C): every coupled component a contiguous row of atoms x channels
    blocks = []
    for terms_by_order, weights_by_order in zip(contractions, weights):
        total = None
        for terms, w in zip(terms_by_order, weights_by_order):
            if len(terms["forward"]["value"]) == 0:
                continue
            folded, contract = _contraction_fn(terms, block)
            contribution = contract["custom" if custom_gradients else "plain"](x_t, _folded_weights(w, folded), species)
            total = contribution if total is None else total + contribution
        blocks.append(jnp.moveaxis(total, 0, 1))
    return blocks
