"""MACE energy model in JAX: node energies, total energies, forces and stress.

``config`` is a JSON-able dict holding the architecture and every fixed constant (irreps, path
weights, Wigner 3j symbols, the nonzero coupling coefficients of the product basis); ``params`` is a
pytree of the trainable arrays. Both come from :func:`jaxmat.forcefields.mace.from_torch` or from a
converted checkpoint (:mod:`jaxmat.forcefields.mace.io`). The computation follows mace-torch's
``ScaleShiftMACE.forward`` (``MACE`` is the case scale 1, shift 0) step for step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.mace import blocks, ops, product_basis, radial
from jaxmat.forcefields.strain import deformation, energies_forces_stress


def spherical_harmonics(vectors, lmax: int):
    """e3nn's real spherical harmonics of the unit vectors, 'component' normalisation; list of (E, 2l+1)."""
    import e3nn_jax

    irreps = "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    sh = e3nn_jax.spherical_harmonics(irreps, vectors, normalize=True, normalization="component").array
    return [sh[:, l * l:(l + 1) * (l + 1)] for l in range(lmax + 1)]


def _edge_lengths_features(config, species, neighbors, lengths, mask):
    """The radial basis of every edge (E, B) - of the transformed lengths where the model has a distance
    transform - and the cutoff (E, 1); mask (E,) False on padding. Models that apply the cutoff to the basis
    (the default) get it folded into the features and None for the cutoff; the others get the raw basis and the
    cutoff to apply to their MLP outputs. Returns (features, cutoff)."""
    cutoff = ops.polynomial_cutoff(lengths, config["r_max"], config["num_polynomial_cutoff"]) * mask[:, None]
    transformed = lengths
    if config.get("distance_transform"):
        radii = jnp.asarray(config["covalent_radii"], lengths.dtype)
        senders, receivers = _edge_species(species, neighbors)
        transformed = radial.transform_distances(lengths, config["distance_transform"], radii[senders], radii[receivers])
    basis = radial.radial_basis(transformed, radial_spec(config))
    if config["apply_cutoff"]:
        return basis * cutoff, None
    return basis, cutoff


def _edge_species(species, neighbors):
    """The species of every edge's sender and receiver, flat (E,) in the (N, K) slot order."""
    return species[neighbors.reshape(-1)], jnp.repeat(species, neighbors.shape[1])


def radial_spec(config) -> dict:
    """The radial basis of a config; configs converted before other bases were supported hold Bessel keys only."""
    return config.get("radial_basis") or {"type": "bessel", "frequencies": config["bessel_frequencies"],
                                          "prefactor": config["bessel_prefactor"]}


def radial_weights_depend_on_length_only(config) -> bool:
    """Whether every layer's tensor-product weights are one function of the edge length, the same for every
    element pair (no distance transform, no node features in the radial MLPs): what a radial table needs."""
    return not config.get("distance_transform") and all(
        c.get("radial_input", "edge") == "edge" and c.get("radial_mlp", "e3nn") == "e3nn" for c in config["interactions"])


def _radial_weights(params, config, lengths, mask):
    """Per-layer tensor-product weights (E, weight_numel) of edges of these lengths (Å); mask (E,) False on padding.
    From params["radial_table"] (:func:`with_radial_table`) when there is one, else the exact radial MLPs.
    Only for models whose radial weights depend on the length alone (:func:`radial_weights_depend_on_length_only`)."""
    if "radial_table" in params:
        return _interpolate_radial(params["radial_table"], lengths, mask, config["r_max"])
    edge_feats, cutoff = _edge_lengths_features(config, None, None, lengths, mask)  # no transform: no species needed
    out = []
    for layer, inter_cfg in enumerate(config["interactions"]):
        with jax.named_scope(f"mace_radial_mlp_L{layer}"):
            w = ops.radial_mlp(params["interactions"][layer]["radial"], inter_cfg["radial_activation_scale"], edge_feats)
            out.append(w if cutoff is None else w * cutoff)
    return out


def _cubic_pieces(values, slopes, h):
    """Per-interval cubic coefficients (G-1, 4, W) of the Hermite interpolant in s = (r - r_i) / h, and those of
    its r-derivative (G-1, 3, W), a quadratic in s."""
    v0, v1, d0, d1 = values[:-1], values[1:], h * slopes[:-1], h * slopes[1:]
    pieces = jnp.stack([v0, d0, 3 * (v1 - v0) - 2 * d0 - d1, 2 * (v0 - v1) + d0 + d1], axis=1)
    return pieces, jnp.stack([pieces[:, 1], 2 * pieces[:, 2], 3 * pieces[:, 3]], axis=1) / h


@jax.custom_vjp
def _table_lookup(pieces, slopes, lengths, r_min, step):
    """w(r) (E, W) from the cubic pieces: one gathered (4, W) row per edge, Horner in s; the backward reads the
    slope table (3, W) the same way. Differentiable in the lengths only; no gradient reaches the tables, which
    are for evaluation, not training."""
    return _table_lookup_forward(pieces, slopes, lengths, r_min, step)[0]


def _table_rows(pieces, lengths, r_min, step):
    """Each edge's interval i (E,), its position s (E, 1) in it, and whether the length lies on the table."""
    t = (lengths - r_min) / step
    inside = (t >= 0.0) & (t <= pieces.shape[0])
    t = jnp.clip(t, 0.0, float(pieces.shape[0]))
    i = jnp.minimum(jnp.floor(t).astype(jnp.int32), pieces.shape[0] - 1)
    return i, (t - i)[:, None], inside


def _table_lookup_forward(pieces, slopes, lengths, r_min, step):
    # each gathered row feeds one elementwise expression, so XLA fuses the gather into it and no (E, 4, W) array
    # is written (that write made the table slower than the MLP on CPU); the backward gathers from its own
    # table, so the two gathers cannot be merged into one materialised array either
    i, s, inside = _table_rows(pieces, lengths, r_min, step)
    c = pieces.at[i].get(mode="promise_in_bounds")  # i is clipped to the table above (a NaN length reads some row: NaN out)
    return c[:, 0] + s * (c[:, 1] + s * (c[:, 2] + s * c[:, 3])), (slopes, i, s, inside)


def _table_lookup_backward(residuals, g):
    slopes, i, s, inside = residuals
    d = slopes.at[i].get(mode="promise_in_bounds")
    slope = d[:, 0] + s * (d[:, 1] + s * d[:, 2])  # dw/dr (E, W); zero where the length was clamped
    # the sum over weights as a product with ones: XLA's CPU reduction with the gather fused into it ran 6x slower
    return None, None, jnp.where(inside, (g * slope) @ jnp.ones(slope.shape[1], slope.dtype), 0.0), None, None


_table_lookup.defvjp(_table_lookup_forward, _table_lookup_backward)


def _interpolate_radial(tables, lengths, mask, r_max: float):
    keep = (mask & (lengths < r_max))[:, None]
    return [jnp.where(keep, _table_lookup(t["pieces"], t["slopes"], lengths, t["r_min"], t["step"]), 0.0) for t in tables]


def with_radial_table(params, config, step: float = 1e-3, r_min: float = 0.5):
    """Optional acceleration (off by default): params plus "radial_table", every layer's radial weights w(r) -
    a function of the edge length alone, the same for every element pair - tabulated on r_min..r_max (Å)
    every ``step`` Å with exact values and r-derivatives (forward-mode AD), read by cubic Hermite interpolation.
    Returns (params, max_error): the largest |w_table - w_exact| over all weights at the grid's midpoints and
    quarter points (where the interpolation error peaks). Lengths below r_min are clamped to r_min (no
    physical structure has neighbours that close); beyond r_max the weights are zero as in the exact model."""
    if not radial_weights_depend_on_length_only(config):
        raise ValueError("a radial table needs radial weights that depend on the edge length alone; this model has a "
                         "distance transform or node features in its radial MLPs")
    r_max = float(config["r_max"])
    intervals = int(np.ceil((r_max - r_min) / step))
    step = (r_max - r_min) / intervals  # uniform grid ending on r_max
    grid = jnp.asarray(np.linspace(r_min, r_max, intervals + 1))
    exact = lambda r: _radial_weights(params, config, r, jnp.ones_like(r, dtype=bool))
    values, slopes = jax.jvp(exact, (grid,), (jnp.ones_like(grid),))
    tables = [dict(zip(("pieces", "slopes"), _cubic_pieces(v, d, step)), step=jnp.asarray(step, grid.dtype),
                   r_min=jnp.asarray(r_min, grid.dtype)) for v, d in zip(values, slopes)]
    probe = jnp.concatenate([grid[:-1] + f * jnp.diff(grid) for f in (0.25, 0.5, 0.75)])
    probe_mask = jnp.ones_like(probe, dtype=bool)
    errors = [jnp.max(jnp.abs(a - b)) for a, b in zip(_interpolate_radial(tables, probe, probe_mask, r_max), exact(probe))]
    return {**params, "radial_table": tables}, float(max(errors))


def node_energies(params, config, species, vectors, neighbors, neighbor_mask, head: int = 0, outgoing_slots=None,
                  contraction_block: int = 1, node_features=None, custom_gradients: bool = True):
    """Interaction energy of every atom (eV, after scale and shift, without the E0s), the ZBL pair repulsion
    included where the model has one (inside the scale and shift, as mace-torch's ScaleShiftMACE).

    species (N,) index into config['atomic_numbers']; neighbors (N, K) the sending atom of each of
    the K neighbour slots of every (receiving) atom; vectors (N, K, 3) Å = r_receiver - r_sender +
    periodic shift; neighbor_mask (N, K) False on padding slots; outgoing_slots (optional, from
    :func:`ops.outgoing_slots`) makes the gradient of the neighbour gathers a gather instead of a scatter;
    contraction_block: monomials per step of the product basis (:func:`product_basis.symmetric_contraction`);
    node_features: {"total_charge": (N,), "total_spin": (N,)} each atom's structure's values, for models with a
    joint embedding (its energy readout, not scaled, is part of the returned energies); custom_gradients=False:
    JAX's own derivatives instead of the hand-written VJPs (slower; forward mode and second derivatives work).
    """
    if not custom_gradients and "radial_table" in params:
        raise ValueError("the radial table has no derivatives of its own beyond the first: use the exact radial MLPs")
    if not custom_gradients:
        outgoing_slots = None
    n_nodes, k_slots = neighbors.shape
    r_max = config["r_max"]
    far = jnp.asarray([2.0 * r_max, 0.0, 0.0], vectors.dtype)
    vectors = jnp.where(neighbor_mask[..., None], vectors, far).reshape(-1, 3)  # padding sits beyond the cutoff
    flat_mask = neighbor_mask.reshape(-1)
    with jax.named_scope("mace_sh"):
        lengths = jnp.linalg.norm(vectors, axis=-1)
        edge_sh = [y.reshape(n_nodes, k_slots, -1) for y in spherical_harmonics(vectors, config["sh_lmax"])]
    with jax.named_scope("mace_radial"):
        edge_feats, cutoff = _edge_lengths_features(config, species, neighbors, lengths, flat_mask)
        tables = None
        if "radial_table" in params:
            tables = [w.reshape(n_nodes, k_slots, -1) for w in _radial_weights(params, config, lengths, flat_mask)]
    edges = {"sh": edge_sh, "feats": edge_feats.reshape(n_nodes, k_slots, -1), "mask": neighbor_mask,
             "cutoff": None if cutoff is None else cutoff.reshape(n_nodes, k_slots, 1), "neighbors": neighbors,
             "outgoing": outgoing_slots, "custom_gradients": custom_gradients}

    embedding = config["node_embedding"]
    (w_embed,) = params["node_embedding"]
    node_feats = [blocks.species_vectors(w_embed, species, embedding["path_weight"])[:, None, :]]  # one-hot @ W
    embedding_energy = 0.0
    if "joint_embedding" in config:
        joint_cfg, joint_params = config["joint_embedding"], params["joint_embedding"]
        node_feats = [node_feats[0] + _joint_embedding(joint_cfg, joint_params, node_features, vectors.dtype)[:, None, :]]
        if "readout" in joint_cfg:
            embedding_energy = blocks.linear(node_feats, joint_cfg["readout"], joint_params["readout"])[0][:, 0, head]

    features_per_layer = []
    for layer, (inter_cfg, prod_cfg) in enumerate(zip(config["interactions"], config["products"])):
        inter_params, prod_params = params["interactions"][layer], params["products"][layer]
        with jax.named_scope(f"mace_interaction_L{layer}"):
            layer_edges = edges if tables is None else {**edges, "tp_weights": tables[layer]}
            messages, sc = blocks.interaction(inter_params, inter_cfg, node_feats, species, layer_edges, config["cg"])
            coupled = jnp.concatenate(messages, axis=1)  # (N, A, C): MACE's reshape_irreps, transposed
        with jax.named_scope(f"mace_product_L{layer}"):
            product_species = jnp.zeros_like(species) if prod_cfg["agnostic"] else species
            contracted = product_basis.symmetric_contraction(coupled, product_species, prod_cfg["contractions"],
                                                             prod_params["weights"], contraction_block, custom_gradients)
        with jax.named_scope(f"mace_linears_L{layer}"):
            node_feats = blocks.linear(contracted, prod_cfg["linear"], prod_params["linear"])
            if prod_cfg["use_sc"] and sc is not None:
                node_feats = [a + b for a, b in zip(node_feats, sc)]
        features_per_layer.append(node_feats)

    with jax.named_scope("mace_readouts"):
        energy = _readouts(params, config, features_per_layer, n_nodes, head, vectors.dtype)
        if config.get("zbl"):
            energy = energy + _zbl_node_energies(config, species, neighbors, lengths, flat_mask)
        scale = jnp.asarray(config["scale"], vectors.dtype)[head]
        shift = jnp.asarray(config["shift"], vectors.dtype)[head]
        return scale * energy + shift + embedding_energy


def _joint_embedding(cfg, params, node_features, dtype):
    """mace-torch's GenericJointEmbedding: each feature embedded (a table row of int(value + offset), or a small
    SiLU MLP of the value), concatenated, projected and passed through SiLU; (N, channels)."""
    embedded = []
    for spec, weights in zip(cfg["specs"], params["embedders"]):
        value = jnp.asarray(node_features[spec["name"]], dtype)
        if spec["type"] == "categorical":
            index = jnp.trunc(value + spec["offset"]).astype(jnp.int32)  # torch's .long() truncates toward zero
            embedded.append(jnp.take(weights["table"], index, axis=0))
        else:
            hidden = jax.nn.silu(value[:, None] @ weights["w1"].T + weights["b1"])
            embedded.append(hidden @ weights["w2"].T + weights["b2"])
    return jax.nn.silu(jnp.concatenate(embedded, axis=-1) @ params["project"].T)


def _zbl_node_energies(config, species, neighbors, lengths, mask):
    """mace-torch's ZBLBasis: each atom's half of the ZBL repulsion with its neighbours (N,) eV."""
    z = jnp.asarray(config["atomic_numbers"], lengths.dtype)
    radii = jnp.asarray(config["covalent_radii"], lengths.dtype)
    senders, receivers = _edge_species(species, neighbors)
    safe = jnp.where(mask, lengths, 1.0)  # padding slots: no division by a far length's gradient trouble, then dropped
    per_edge = radial.zbl_edge_energies(safe, config["zbl"], z[senders], z[receivers], radii[senders], radii[receivers])
    return jnp.sum(jnp.where(mask, per_edge, 0.0).reshape(neighbors.shape), axis=1)


def _readouts(params, config, features_per_layer, n_nodes, head, dtype):
    """Sum of the readouts' node energies (eV, before scale and shift) for this head."""
    energy = jnp.zeros((n_nodes,), dtype)
    readouts = config["readouts"]
    for i, (readout_cfg, readout_params) in enumerate(zip(readouts, params["readouts"])):
        feats = features_per_layer[-1 if len(readouts) == 1 else i]
        if readout_cfg["kind"] == "linear":
            out = blocks.linear(feats, readout_cfg["linear"], readout_params["linear"])
        else:
            hidden = _readout_hidden(blocks.linear(feats, readout_cfg["linear_1"], readout_params["linear_1"]), readout_cfg, head)
            if readout_cfg["kind"] == "nonlinear_bias":
                mid = blocks.linear(hidden, readout_cfg["linear_mid"], readout_params["linear_mid"])
                hidden = _readout_hidden(mid, readout_cfg, head)
            out = blocks.linear(hidden, readout_cfg["linear_2"], readout_params["linear_2"])
        energy = energy + out[0][:, 0, head]
    return energy


def _readout_hidden(hidden, readout_cfg, head):
    """The readout's gate (normalised SiLU) and, in multi-head models, mace-torch's mask_head: only this head's
    share of the hidden channels."""
    hidden = [jax.nn.silu(h) * readout_cfg["activation_scale"] for h in hidden]
    num_heads = readout_cfg["num_heads"]
    if num_heads > 1:
        width = hidden[0].shape[-1] // num_heads
        keep = (jnp.arange(hidden[0].shape[-1]) // width == head).astype(hidden[0].dtype)
        hidden = [h * keep for h in hidden]
    return hidden


def reference_energies(config, species, head: int = 0):
    """E0 of every atom (eV)."""
    return jnp.asarray(np.asarray(config["atomic_energies"])[head])[species]


def energy_forces_stress(params, config, positions, species, cells, system_index, neighbors, shifts,
                         neighbor_mask, n_systems: int, head: int = 0, outgoing_slots=None, compute_dtype=None,
                         contraction_block: int = 1, system_features=None, custom_gradients: bool = True):
    """Total energies (S,) eV, forces (N, 3) eV/Å = -dE/dx and stress (S, 3, 3) eV/Å^3 = (1/V) dE/d(strain).

    neighbors (N, K) senders of each atom's neighbour slots; shifts (N, K, 3) Å the periodic image
    offset of each slot (vector = r_atom - r_neighbor + shift); neighbor_mask (N, K); system_features:
    {"total_charge": (S,), "total_spin": (S,)} for models with a joint embedding; custom_gradients: as
    :func:`node_energies` (False for second derivatives: ``jax.jacfwd`` of the forces is the negative Hessian).

    compute_dtype: the dtype of :func:`node_energies` (default: that of params). The geometry - strain,
    edge vectors r_receiver - r_sender + shift -, the per-system sums of node energies, the E0s and so the
    backward pass's sums over edges into forces and stress run in the dtype of positions. Float32 params
    with float64 positions, cells and shifts (``MACEJax(dtype="mixed")``, inside a float64 scope) thus give
    a float32 model with float64 geometry and accumulation: each vector is cast to float32 after the
    subtraction, each node energy back to float64 before the sum, and the cotangents cross the same casts.
    """
    if compute_dtype is None:
        compute_dtype = next(a.dtype for a in jax.tree_util.tree_leaves(params) if jnp.issubdtype(a.dtype, jnp.floating))

    def interaction_energy(positions, strain):
        atom_deform = deformation(strain)[system_index]
        pos = jnp.einsum("na,nab->nb", positions, atom_deform)
        shift = jnp.einsum("nka,nab->nkb", shifts, atom_deform)  # an edge belongs to its receiver's system
        plain = outgoing_slots is None or not custom_gradients
        senders = pos[neighbors] if plain else ops.gather_neighbors(pos, neighbors, outgoing_slots)
        vectors = (pos[:, None, :] - senders + shift).astype(compute_dtype)  # rounded to the edge, not the coordinates
        node_features = None if system_features is None else {k: v[system_index] for k, v in system_features.items()}
        e_node = node_energies(params, config, species, vectors, neighbors, neighbor_mask, head, outgoing_slots, contraction_block,
                               node_features, custom_gradients)
        return jax.ops.segment_sum(e_node.astype(positions.dtype), system_index, n_systems)

    e_inter, forces, stress = energies_forces_stress(interaction_energy, positions, cells, n_systems)
    e0 = jax.ops.segment_sum(reference_energies(config, species, head).astype(positions.dtype), system_index, n_systems)
    return e0 + e_inter, forces, stress
