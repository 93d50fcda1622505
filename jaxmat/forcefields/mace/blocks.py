"""MACE's interaction blocks in JAX, one function for every mace-torch 0.3.16 variant.

An interaction maps node features to messages (and, for residual blocks, a self-connection ``sc`` added
after the product basis). The variants differ in four choices, each a key of the layer's config:

- ``radial_input``: what the radial MLP reads per edge - "edge" (the radial basis), "att" (plus a 64-channel
  down-projection of sender and receiver features: RealAgnosticAttResidualInteractionBlock) or "embedding"
  (plus learned sender and receiver species embeddings: RealAgnosticResidualNonLinearInteractionBlock);
- ``radial_mlp``: "e3nn" (FullyConnectedNet: no biases, normalised SiLU) or "layernorm" (Linear + LayerNorm +
  SiLU, with biases);
- ``normalization``: messages divided by "avg" (avg_num_neighbors), "density" (1 + a learned smooth neighbour
  count) or "nonlinear" (alpha + beta * that count, then a residual, a gate and a linear map);
- ``skip_kind``: the self-connection, "species" (a tensor product with the one-hot species) or "linear".

Blocks are lists of (N, 2l+1, mul) arrays as in :mod:`jaxmat.forcefields.mace.ops`; edges are laid out per
receiving atom, (N, K, ...), K neighbour slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmat.forcefields.mace import ops


def out_shapes(irreps: str):
    return [(mul, 2 * l + 1) for mul, l, _ in ops.parse_irreps(irreps)]


def linear(blocks, spec, weights):
    """e3nn o3.Linear (biases, if the spec has them, on the scalar outputs)."""
    out = ops.linear(blocks, spec["paths"], weights if not spec.get("biases") else weights["weights"], out_shapes(spec["irreps_out"]))
    if spec.get("biases"):
        out = [o + b for o, b in zip(out, _bias_blocks(spec, weights["biases"], out))]
    return out


def _bias_blocks(spec, biases, out):
    """The bias of each output block (zeros for non-scalar blocks), e3nn's order of the flat bias vector."""
    terms, offset = [], 0
    for (mul, l, parity), block in zip(ops.parse_irreps(spec["irreps_out"]), out):
        if l == 0 and parity == 1:
            terms.append(biases[offset:offset + mul])
            offset += mul
        else:
            terms.append(jnp.zeros((), block.dtype))
    return terms


def species_linear(blocks, species, spec, weights):
    return ops.species_linear(blocks, species, spec["paths"], weights, out_shapes(spec["irreps_out"]))


def species_vectors(weights, species, path_weight: float):
    """e3nn Linear of the one-hot species (Nx0e -> Cx0e): each atom's row of the weight matrix (N, C)."""
    return path_weight * jnp.take(weights, species, axis=0)


def mlp(kind: str, weights, x, activation_scale: float = 1.0):
    """The radial MLP of a layer: "e3nn" (ops.radial_mlp) or "layernorm" (mace-torch's RadialMLP: Linear with
    bias, then LayerNorm (eps 1e-5) and SiLU between layers); weights of "layernorm" are dicts of
    weight (out, in), bias, and, but for the last, ln_weight, ln_bias."""
    if kind == "e3nn":
        return ops.radial_mlp(weights, activation_scale, x)
    for i, layer in enumerate(weights):
        x = x @ layer["weight"].T + layer["bias"]
        if i < len(weights) - 1:
            mean = jnp.mean(x, axis=-1, keepdims=True)
            variance = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
            x = (x - mean) / jnp.sqrt(variance + 1e-5) * layer["ln_weight"] + layer["ln_bias"]
            x = jax.nn.silu(x)
    return x


def _gather(x, edges):
    """Sender rows x[neighbors] (N, K, ...)."""
    outgoing = edges.get("outgoing")
    return x[edges["neighbors"]] if outgoing is None else ops.gather_neighbors(x, edges["neighbors"], outgoing)


def _radial_input(cfg, params, node_feats, species, edges):
    """What the layer's radial MLP reads per edge, (N, K, features)."""
    feats = edges["feats"]
    kind = cfg.get("radial_input", "edge")
    if kind == "edge":
        return feats
    if kind == "att":
        (down,) = linear(node_feats, cfg["linear_down"], params["linear_down"])
        down = down[:, 0, :]
        sender, receiver = _gather(down, edges), down[:, None, :]
    elif kind == "embedding":
        sender = _gather(species_vectors(params["source_embedding"], species, cfg["source_embedding"]), edges)
        receiver = species_vectors(params["target_embedding"], species, cfg["target_embedding"])[:, None, :]
    else:
        raise ValueError(f"unknown radial input {kind!r}")
    shape = feats.shape[:2]
    return jnp.concatenate([feats, jnp.broadcast_to(sender, shape + sender.shape[2:]),
                            jnp.broadcast_to(receiver, shape + receiver.shape[2:])], axis=-1)


def _edge_weights(cfg, params, radial_in, edges):
    """The tensor-product weights (N, K, W) and, for density blocks, the smooth neighbour count (N, 1, 1)."""
    n, k = radial_in.shape[:2]
    flat = radial_in.reshape(n * k, -1)
    kind = cfg.get("radial_mlp", "e3nn")
    if edges.get("tp_weights") is not None:
        weights = edges["tp_weights"]
    else:
        weights = mlp(kind, params["radial"], flat, cfg.get("radial_activation_scale", 1.0)).reshape(n, k, -1)
        if edges["cutoff"] is not None:
            weights = weights * edges["cutoff"]
        if cfg.get("radial_input", "edge") != "edge" or kind != "e3nn":  # nonzero on padding slots: mask them
            weights = jnp.where(edges["mask"][..., None], weights, 0.0)
    if cfg.get("normalization", "avg") == "avg":
        return weights, None
    density = jnp.tanh(mlp(kind, params["density"], flat) ** 2).reshape(n, k, 1)
    if edges["cutoff"] is not None:
        density = density * edges["cutoff"]
    density = jnp.where(edges["mask"][..., None], density, 0.0)
    return weights, jnp.sum(density, axis=1)[:, :, None]  # (N, 1, 1): broadcasts over (N, 2l+1, mul) blocks


def _gate(blocks, spec):
    """mace-torch's GatedEquivariantBlock on blocks of the sorted, simplified irreps: SiLU on the scalars,
    each gated block times the sigmoid of its gates (both normalised by their second-moment constants)."""
    scalar_block = blocks[0][:, 0, :]
    s0, s_len = spec["scalars"]
    g0, g_len = spec["gates"]
    scalars = jax.nn.silu(scalar_block[:, s0:s0 + s_len]) * spec["scalar_cst"]
    gates = jax.nn.sigmoid(scalar_block[:, g0:g0 + g_len]) * spec["gate_cst"]
    gated = [blocks[index] * gates[:, None, offset:offset + blocks[index].shape[2]] for index, offset in spec["gated"]]
    return [scalars[:, None, :]] + gated


def interaction(params, cfg, node_feats, species, edges, cg):
    """(messages, sc): a layer's messages (blocks of its target irreps) and self-connection (None unless residual).

    edges: sh (list of (N, K, 2l+1)), feats (N, K, B) radial basis (times the cutoff when the model applies it),
    cutoff (N, K, 1) or None (models with apply_cutoff=False: applied to the MLP outputs instead), mask (N, K),
    neighbors (N, K), outgoing (optional, :func:`ops.outgoing_slots`), tp_weights (optional, precomputed),
    custom_gradients (optional, default True: the hand-written VJPs; False: JAX's own derivatives)."""
    skip_kind = cfg.get("skip_kind", "species")
    sc = None
    if cfg["residual"]:
        sc = (species_linear(node_feats, species, cfg["skip"], params["skip"]) if skip_kind == "species"
              else linear(node_feats, cfg["skip"], params["skip"]))
    up = linear(node_feats, cfg["linear_up"], params["linear_up"])
    radial_in = _radial_input(cfg, params, node_feats, species, edges)
    tp_weights, density = _edge_weights(cfg, params, radial_in, edges)
    gathered = [_gather(b, edges) for b in up]
    messages = ops.convolution(gathered, edges["sh"], tp_weights, cfg["tp_paths"], cg, edges.get("custom_gradients", True))
    normalization = cfg.get("normalization", "avg")
    if normalization == "nonlinear":
        messages = linear(messages, cfg["linear_1"], params["linear_1"])
        residual = linear(up, cfg["linear_res"], params["linear_res"])
        divisor = density * params["beta"] + params["alpha"]
        messages = _gate([m / divisor + r for m, r in zip(messages, residual)], cfg["gate"])
        return linear(messages, cfg["linear_2"], params["linear_2"]), sc
    messages = linear(messages, cfg["linear"], params["linear"])
    divisor = cfg["avg_num_neighbors"] if normalization == "avg" else density + 1.0
    messages = [m / divisor for m in messages]
    if not cfg["residual"]:
        messages = species_linear(messages, species, cfg["skip"], params["skip"])
    return messages, sc
