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

from jaxmat.forcefields.mace.memo import IdentityMemo


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


def polynomial_cutoff(lengths, r_max, p: int):
    """MACE's smooth envelope (1 at r=0, 0 with p derivatives at r_max); lengths (E,) Å -> (E, 1); r_max a number
    or one per edge (E, 1) (ZBL's covalent-radius sums)."""
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
        d_senders, d_sh = [None] * len(sender_blocks), [None] * len(edge_sh)  # no zero arrays written (60 MB each on W1)
        add = lambda total, term: term if total is None else total + term
        d_weights = []
        for (i1, i2, l_out, path_weight, offset), g_path in zip(paths, g):
            x1 = sender_blocks[i1]
            coupled = _coupling(x1, edge_sh[i2], l_out, cg)
            w = edge_weights[:, :, None, offset:offset + x1.shape[3]]
            g_path = path_weight * g_path  # scaled while small: a scalar on an (N, K, ...) product is a broadcast array to XLA's CPU dots
            d_weighted = jnp.einsum("nkil,nlu->nkiu", coupled, g_path)
            d_senders[i1] = add(d_senders[i1], d_weighted * w)
            d_weights.append(jnp.sum(d_weighted * x1, axis=2))
            d_coupled = jnp.einsum("nkiu,nlu->nkil", w * x1, g_path)
            d_sh[i2] = add(d_sh[i2], _coupling_transpose(d_coupled, x1, edge_sh[i2], l_out, cg))
        d_senders = [jnp.zeros_like(b) if d is None else d for b, d in zip(sender_blocks, d_senders)]
        d_sh = [jnp.zeros_like(y) if d is None else d for y, d in zip(edge_sh, d_sh)]
        return d_senders, d_sh, jnp.concatenate(d_weights, axis=-1)

    convolve.defvjp(forward, backward)
    return convolve


_CONVOLUTION_FNS = IdentityMemo()


def convolution(sender_blocks, edge_sh, edge_weights, paths, cg, custom_gradients: bool = True):
    """e3nn TensorProduct in 'uvu' mode with per-edge weights, summed over each atom's neighbours.

    Edges are laid out per receiving atom: sender_blocks[i] (N, K, 2l1+1, mul) the features of the
    K neighbours of each atom, edge_sh[j] (N, K, 2l2+1), edge_weights (N, K, weight_numel) (zero on
    padding slots); paths = ((i1, i2, l_out, path_weight, weight_offset), ...) in output-block order,
    their weight slices consecutive; cg["l1_l2_l3"] e3nn's Wigner 3j symbol. Returns, per output block,
    out[n, k, u] = path_weight sum_neighbours w[u] sum_ij x1[i, u] x2[j] C[i, j, k]  (N, 2l3+1, mul),
    as a batched matrix product, so no (edges x channels x components) message tensor is summed by scatter.
    Custom VJP (same numbers as autodiff): the backward's products keep the channels-minor layout;
    custom_gradients=False leaves the derivatives to JAX (forward mode and second derivatives work).
    """
    widths = [sender_blocks[p[0]].shape[3] for p in paths]
    if (not custom_gradients or [p[4] for p in paths] != list(np.cumsum([0] + widths[:-1]))
            or sum(widths) != edge_weights.shape[-1]):
        return _convolution_forward(sender_blocks, edge_sh, edge_weights, paths, cg)  # not the layout the VJP assumes
    return _CONVOLUTION_FNS.get(_make_convolution, paths, cg)(sender_blocks, edge_sh, edge_weights)
