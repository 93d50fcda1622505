"""The equivariant building blocks of MACE as pure functions on per-irrep blocks.

Features are lists of blocks, one per irrep of an e3nn Irreps string: block ``i`` has shape
(..., 2 l_i + 1, mul_i) - components first, channels last (the minor axis), so that linear maps are
plain matrix products and channel-wise products vectorise over channels. The numbers are those of
e3nn's flat (mul, ir) layout, transposed per block. Every operation carries the normalisation of its
e3nn (torch) counterpart so imported weights give the same outputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def parse_irreps(irreps: str) -> list[tuple[int, int, int]]:
    """'128x0e+32x1o' -> [(128, 0, 1), (32, 1, -1)] (mul, l, parity), order kept, nothing merged."""
    out = []
    for term in irreps.replace(" ", "").split("+"):
        if not term:
            continue
        mul, ir = term.split("x") if "x" in term else ("1", term)
        out.append((int(mul), int(ir[:-1]), 1 if ir[-1] == "e" else -1))
    return out


# ---- radial part ---------------------------------------------------------------------------------

def bessel_basis(lengths, frequencies, prefactor: float):
    """MACE's Bessel basis prefactor sin(w_n r) / r (w_n = n pi / r_max unless trained); lengths (E,) Å -> (E, n)."""
    return prefactor * (jnp.sin(frequencies * lengths[:, None]) / lengths[:, None])


def polynomial_cutoff(lengths, r_max: float, p: int):
    """MACE's smooth envelope (1 at r=0, 0 with p derivatives at r_max); lengths (E,) Å -> (E, 1)."""
    x = lengths[:, None] / r_max
    envelope = (1.0 - ((p + 1.0) * (p + 2.0) / 2.0) * x**p + p * (p + 2.0) * x ** (p + 1)
                - (p * (p + 1.0) / 2) * x ** (p + 2))
    return envelope * (x < 1.0)


def radial_mlp(weights, activation_scale: float, x):
    """e3nn FullyConnectedNet with normalised SiLU hidden layers and a linear last layer."""
    for i, w in enumerate(weights):
        x = x @ (w / math.sqrt(w.shape[0]))
        if i < len(weights) - 1:
            x = jax.nn.silu(x) * activation_scale
    return x


# ---- linear maps -----------------------------------------------------------------------------------

def linear(blocks_in, paths, weights, out_shapes):
    """e3nn o3.Linear: out[i_out] += path_weight * sum_u w[u, w'] x[i_in][u]; paths = ((i_in, i_out,
    path_weight), ...); out_shapes[i] = (mul, dim) of each output block (zeros where nothing feeds)."""
    lead = blocks_in[0].shape[:-2]
    out = [None] * len(out_shapes)
    for (i_in, i_out, path_weight), w in zip(paths, weights):
        term = path_weight * (blocks_in[i_in] @ w)
        out[i_out] = term if out[i_out] is None else out[i_out] + term
    return [o if o is not None else jnp.zeros(lead + (shape[1], shape[0]), blocks_in[0].dtype) for o, shape in zip(out, out_shapes)]


def species_linear(blocks_in, species, paths, weights, out_shapes):
    """e3nn FullyConnectedTensorProduct(x, one_hot(species)) ('uvw' paths with a Nx0e second input):
    out[i_out] += path_weight * sum_u x[i_in][u] w[u, species, w'] (the one-hot sum has one term)."""
    lead = blocks_in[0].shape[:-2]
    out = [None] * len(out_shapes)
    for (i_in, i_out, path_weight), w in zip(paths, weights):  # w (mul_in, num_species, mul_out)
        per_atom = jnp.take(w, species, axis=1)  # (mul_in, N, mul_out)
        term = path_weight * jnp.einsum("uaw,aiu->aiw", per_atom, blocks_in[i_in])
        out[i_out] = term if out[i_out] is None else out[i_out] + term
    return [o if o is not None else jnp.zeros(lead + (shape[1], shape[0]), blocks_in[0].dtype) for o, shape in zip(out, out_shapes)]


# ---- neighbour gathers ---------------------------------------------------------------------------------

@jax.custom_vjp
def gather_neighbors(x, neighbors, outgoing_slots):
    """x[neighbors] (N, K, ...) whose gradient is a gather too: outgoing_slots (N, K_out) lists, for every
    atom, the flat slots (n * K + k) where it is the sender (N * K for none). Summing those rows replaces
    the scatter-add that transposes a gather, which is slow on CPU."""
    return x[neighbors]


def _gather_forward(x, neighbors, outgoing_slots):
    return x[neighbors], (outgoing_slots, x.shape[0])


def _gather_backward(residuals, cotangent):
    outgoing_slots, _ = residuals
    flat = cotangent.reshape((-1,) + cotangent.shape[2:])
    flat = jnp.concatenate([flat, jnp.zeros((1,) + flat.shape[1:], flat.dtype)])
    return jnp.sum(flat[outgoing_slots], axis=1), None, None


gather_neighbors.defvjp(_gather_forward, _gather_backward)


def outgoing_slots(neighbors: np.ndarray, mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """For :func:`gather_neighbors`: (N, K_out) flat slots where each atom sends, N*K where none (host side).
    K_out = width (default K: a full neighbour list is symmetric, so nobody sends more than K) or more if needed."""
    n_atoms, k_slots = neighbors.shape
    flat = np.flatnonzero(mask.ravel())
    senders = neighbors.ravel()[flat]
    order = np.argsort(senders, kind="stable")
    flat, senders = flat[order], senders[order]
    counts = np.bincount(senders, minlength=n_atoms)
    column = np.arange(len(senders)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = max(int(counts.max(initial=0)), k_slots if width is None else width, 1)
    out = np.full((n_atoms, width), n_atoms * k_slots, np.int32)
    out[senders, column] = flat
    return out


# ---- the edge tensor product -------------------------------------------------------------------------

def _coupling(x1, x2, l_out, cg):
    """coupled[n, k, i, l] = sum_j x2[n, k, j] C[i, j, l]: the edge's spherical harmonics times the Wigner 3j."""
    l1, l2 = (x1.shape[2] - 1) // 2, (x2.shape[-1] - 1) // 2
    return jnp.einsum("nkj,ijl->nkil", x2, jnp.asarray(cg[f"{l1}_{l2}_{l_out}"], x2.dtype))


def _coupling_transpose(d_coupled, x1, x2, l_out, cg):
    """The cotangent of x2 in :func:`_coupling` for the cotangent d_coupled of its result."""
    l1, l2 = (x1.shape[2] - 1) // 2, (x2.shape[-1] - 1) // 2
    return jnp.einsum("nkil,ijl->nkj", d_coupled, jnp.asarray(cg[f"{l1}_{l2}_{l_out}"], d_coupled.dtype))


def _convolution_forward(sender_blocks, edge_sh, edge_weights, paths, cg):
    out = []
    for i1, i2, l_out, path_weight, offset in paths:
        x1 = sender_blocks[i1]
        coupled = _coupling(x1, edge_sh[i2], l_out, cg)
        weighted = edge_weights[:, :, None, offset:offset + x1.shape[3]] * x1  # (N, K, 2l1+1, mul)
        out.append(path_weight * jnp.einsum("nkil,nkiu->nlu", coupled, weighted))
    return out


def _make_convolution(paths, cg):
    @jax.custom_vjp
    def convolve(sender_blocks, edge_sh, edge_weights):
        return _convolution_forward(sender_blocks, edge_sh, edge_weights, paths, cg)

    def forward(sender_blocks, edge_sh, edge_weights):
        return _convolution_forward(sender_blocks, edge_sh, edge_weights, paths, cg), (sender_blocks, edge_sh, edge_weights)

    def backward(residuals, g):
        # every product in the layout its operands already have (channels minor): autodiff's transposes
        # rewrote each (N, K, 2l1+1, mul) weighted feature tensor transposed, path by path
        sender_blocks, edge_sh, edge_weights = residuals
        d_senders = [jnp.zeros_like(b) for b in sender_blocks]
        d_sh = [jnp.zeros_like(y) for y in edge_sh]
        d_weights = []
        for (i1, i2, l_out, path_weight, offset), g_path in zip(paths, g):
            x1 = sender_blocks[i1]
            coupled = _coupling(x1, edge_sh[i2], l_out, cg)
            w = edge_weights[:, :, None, offset:offset + x1.shape[3]]
            d_weighted = path_weight * jnp.einsum("nkil,nlu->nkiu", coupled, g_path)
            d_senders[i1] = d_senders[i1] + d_weighted * w
            d_weights.append(jnp.sum(d_weighted * x1, axis=2))
            d_coupled = path_weight * jnp.einsum("nkiu,nlu->nkil", w * x1, g_path)
            d_sh[i2] = d_sh[i2] + _coupling_transpose(d_coupled, x1, edge_sh[i2], l_out, cg)
        return d_senders, d_sh, jnp.concatenate(d_weights, axis=-1)

    convolve.defvjp(forward, backward)
    return convolve


_CONVOLUTION_FNS: dict = {}


def convolution(sender_blocks, edge_sh, edge_weights, paths, cg):
    """e3nn TensorProduct in 'uvu' mode with per-edge weights, summed over each atom's neighbours.

    Edges are laid out per receiving atom: sender_blocks[i] (N, K, 2l1+1, mul) the features of the
    K neighbours of each atom, edge_sh[j] (N, K, 2l2+1), edge_weights (N, K, weight_numel) (zero on
    padding slots); paths = ((i1, i2, l_out, path_weight, weight_offset), ...) in output-block order,
    their weight slices consecutive; cg["l1_l2_l3"] e3nn's Wigner 3j symbol. Returns, per output block,
    out[n, k, u] = path_weight sum_neighbours w[u] sum_ij x1[i, u] x2[j] C[i, j, k]  (N, 2l3+1, mul),
    as a batched matrix product, so no (edges x channels x components) message tensor is summed by scatter.
    Custom VJP (same numbers as autodiff): the backward's products keep the channels-minor layout.
    """
    widths = [sender_blocks[p[0]].shape[3] for p in paths]
    if [p[4] for p in paths] != list(np.cumsum([0] + widths[:-1])) or sum(widths) != edge_weights.shape[-1]:
        return _convolution_forward(sender_blocks, edge_sh, edge_weights, paths, cg)  # not the layout the VJP assumes
    key = (id(paths), id(cg))
    if key not in _CONVOLUTION_FNS:
        _CONVOLUTION_FNS[key] = (paths, cg, _make_convolution(paths, cg))  # keeps them alive: the ids stay unique
    return _CONVOLUTION_FNS[key][2](sender_blocks, edge_sh, edge_weights)


# ---- the symmetric contraction (MACE's product basis) ------------------------------------------------
#
# For one output irrep and one correlation order nu, MACE computes
#     out[n, m, c] = sum_{a1..anu, k} U[m, a1..anu, k] x[n, a1, c] ... x[n, anu, c] W[species_n, k, c].
# U is very sparse (e.g. 1,715 distinct nonzero products of 626,688 entries for 1o at nu=3 on 16
# coupled components), so only its nonzero terms are visited. The weights are folded into one per
# distinct monomial (290 for 1o at nu=3) and species, and the monomials are summed in a loop whose
# every step is a few multiplies of contiguous (atoms x channels) rows; the gradient is the same loop
# (custom VJP), so nothing of size (atoms x channels x terms) is materialised.


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

    @jax.custom_vjp
    def contract(x, weights, species):
        return forward_loop(x, weights, species)

    def forward(x, weights, species):
        return forward_loop(x, weights, species), (x, weights, species)

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

    contract.defvjp(forward, backward)
    return contract


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

    @jax.custom_vjp
    def contract(x, weights, species):
        return forward_loop(x, weights, species)

    def forward(x, weights, species):
        return forward_loop(x, weights, species), (x, weights, species)

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

    contract.defvjp(forward, backward)
    return contract


_CONTRACTION_FNS: dict = {}


def _contraction_fn(terms, block: int = 1):
    key = (id(terms), block)
    if key not in _CONTRACTION_FNS:
        folded = _folded_terms(terms)  # kept with terms alive, so the id stays unique
        make = _make_contraction(folded) if block == 1 else _make_blocked_contraction(folded, block)
        _CONTRACTION_FNS[key] = (terms, folded, make)
    return _CONTRACTION_FNS[key][1:]


def symmetric_contraction(x, species, contractions, weights, block: int = 1):
    """MACE SymmetricContraction. x (N, A, C): the coupled features stacked; contractions[o][nu-1]
    the :func:`contraction_terms` of output irrep o; weights[o][nu-1] (S, K, C). One (N, 2l+1, C) block
    per output irrep. block: monomials per loop step (1: the one-monomial loop, fastest on CPU; larger: fewer,
    larger steps, :func:`_make_blocked_contraction`); the same numbers up to summation order."""
    if int(block) < 1:
        raise ValueError(f"block must be a whole number >= 1, not {block!r}")
    x_t = jnp.moveaxis(x, 1, 0)  # (A, N, C): every coupled component a contiguous row of atoms x channels
    blocks = []
    for terms_by_order, weights_by_order in zip(contractions, weights):
        total = None
        for terms, w in zip(terms_by_order, weights_by_order):
            if len(terms["forward"]["value"]) == 0:
                continue
            folded, contract = _contraction_fn(terms, int(block))
            contribution = contract(x_t, _folded_weights(w, folded), species)
            total = contribution if total is None else total + contribution
        blocks.append(jnp.moveaxis(total, 0, 1))
    return blocks
