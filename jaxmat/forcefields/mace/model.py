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

from jaxmat.forcefields.mace import ops
from jaxmat.forcefields.strain import deformation, energies_forces_stress


def _out_shapes(irreps: str):
    return [(mul, 2 * l + 1) for mul, l, _ in ops.parse_irreps(irreps)]


def _linear(blocks, spec, weights):
    return ops.linear(blocks, spec["paths"], weights, _out_shapes(spec["irreps_out"]))


def _species_linear(blocks, species, spec, weights):
    return ops.species_linear(blocks, species, spec["paths"], weights, _out_shapes(spec["irreps_out"]))


def spherical_harmonics(vectors, lmax: int):
    """e3nn's real spherical harmonics of the unit vectors, 'component' normalisation; list of (E, 2l+1)."""
    import e3nn_jax

    irreps = "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    sh = e3nn_jax.spherical_harmonics(irreps, vectors, normalize=True, normalization="component").array
    return [sh[:, l * l:(l + 1) * (l + 1)] for l in range(lmax + 1)]


def _radial_weights(params, config, lengths, mask):
    """Per-layer tensor-product weights (E, weight_numel) of edges of these lengths (Å); mask (E,) False on padding."""
    radial = ops.bessel_basis(lengths, jnp.asarray(config["bessel_frequencies"], lengths.dtype), config["bessel_prefactor"])
    cutoff = ops.polynomial_cutoff(lengths, config["r_max"], config["num_polynomial_cutoff"]) * mask[:, None]
    edge_feats = radial * cutoff if config["apply_cutoff"] else radial
    out = []
    for layer, inter_cfg in enumerate(config["interactions"]):
        with jax.named_scope(f"mace_radial_mlp_L{layer}"):
            w = ops.radial_mlp(params["interactions"][layer]["radial"], inter_cfg["radial_activation_scale"], edge_feats)
            out.append(w if config["apply_cutoff"] else w * cutoff)
    return out


def node_energies(params, config, species, vectors, neighbors, neighbor_mask, head: int = 0, outgoing_slots=None):
    """Interaction energy of every atom (eV, after scale and shift, without the E0s).

    species (N,) index into config['atomic_numbers']; neighbors (N, K) the sending atom of each of
    the K neighbour slots of every (receiving) atom; vectors (N, K, 3) Å = r_receiver - r_sender +
    periodic shift; neighbor_mask (N, K) False on padding slots; outgoing_slots (optional, from
    :func:`ops.outgoing_slots`) makes the gradient of the neighbour gathers a gather instead of a scatter.
    """
    n_nodes, k_slots = neighbors.shape
    r_max = config["r_max"]
    far = jnp.asarray([2.0 * r_max, 0.0, 0.0], vectors.dtype)
    vectors = jnp.where(neighbor_mask[..., None], vectors, far).reshape(-1, 3)  # padding sits beyond the cutoff
    with jax.named_scope("mace_sh"):
        lengths = jnp.linalg.norm(vectors, axis=-1)
        edge_sh = [y.reshape(n_nodes, k_slots, -1) for y in spherical_harmonics(vectors, config["sh_lmax"])]
    with jax.named_scope("mace_radial"):
        tp_weights_per_layer = [w.reshape(n_nodes, k_slots, -1)
                                for w in _radial_weights(params, config, lengths, neighbor_mask.reshape(-1))]

    embedding = config["node_embedding"]
    (w_embed,) = params["node_embedding"]
    node_feats = [embedding["path_weight"] * jnp.take(w_embed, species, axis=0)[:, None, :]]  # one-hot @ W

    features_per_layer = []
    for layer, (inter_cfg, prod_cfg) in enumerate(zip(config["interactions"], config["products"])):
        inter_params, prod_params = params["interactions"][layer], params["products"][layer]
        with jax.named_scope(f"mace_linears_L{layer}"):
            sc = _species_linear(node_feats, species, inter_cfg["skip"], inter_params["skip"]) if inter_cfg["residual"] else None
            up = _linear(node_feats, inter_cfg["linear_up"], inter_params["linear_up"])
        tp_weights = tp_weights_per_layer[layer]
        with jax.named_scope(f"mace_conv_L{layer}"):
            gathered = [b[neighbors] if outgoing_slots is None else ops.gather_neighbors(b, neighbors, outgoing_slots) for b in up]
            messages = ops.convolution(gathered, edge_sh, tp_weights, inter_cfg["tp_paths"], config["cg"])
        with jax.named_scope(f"mace_linears_L{layer}"):
            messages = [m / inter_cfg["avg_num_neighbors"] for m in _linear(messages, inter_cfg["linear"], inter_params["linear"])]
            if not inter_cfg["residual"]:
                messages = _species_linear(messages, species, inter_cfg["skip"], inter_params["skip"])
            coupled = jnp.concatenate(messages, axis=1)  # (N, A, C): MACE's reshape_irreps, transposed
        with jax.named_scope(f"mace_product_L{layer}"):
            product_species = jnp.zeros_like(species) if prod_cfg["agnostic"] else species
            blocks = ops.symmetric_contraction(coupled, product_species, prod_cfg["contractions"], prod_params["weights"])
        with jax.named_scope(f"mace_linears_L{layer}"):
            node_feats = _linear(blocks, prod_cfg["linear"], prod_params["linear"])
            if prod_cfg["use_sc"] and sc is not None:
                node_feats = [a + b for a, b in zip(node_feats, sc)]
        features_per_layer.append(node_feats)

    with jax.named_scope("mace_readouts"):
        return _readouts(params, config, features_per_layer, n_nodes, head, vectors.dtype)


def _readouts(params, config, features_per_layer, n_nodes, head, dtype):
    """Sum of the readouts' node energies, scaled and shifted (eV)."""
    energy = jnp.zeros((n_nodes,), dtype)
    readouts = config["readouts"]
    for i, (readout_cfg, readout_params) in enumerate(zip(readouts, params["readouts"])):
        feats = features_per_layer[-1 if len(readouts) == 1 else i]
        if readout_cfg["kind"] == "linear":
            out = _linear(feats, readout_cfg["linear"], readout_params["linear"])
        else:
            hidden = _linear(feats, readout_cfg["linear_1"], readout_params["linear_1"])
            hidden = [jax.nn.silu(h) * readout_cfg["activation_scale"] for h in hidden]
            num_heads = readout_cfg["num_heads"]
            if num_heads > 1:
                width = hidden[0].shape[-1] // num_heads
                keep = (jnp.arange(hidden[0].shape[-1]) // width == head).astype(hidden[0].dtype)
                hidden = [h * keep for h in hidden]
            out = _linear(hidden, readout_cfg["linear_2"], readout_params["linear_2"])
        energy = energy + out[0][:, 0, head]
    scale = jnp.asarray(config["scale"], dtype)[head]
    shift = jnp.asarray(config["shift"], dtype)[head]
    return scale * energy + shift


def reference_energies(config, species, head: int = 0):
    """E0 of every atom (eV)."""
    return jnp.asarray(np.asarray(config["atomic_energies"])[head])[species]


def energy_forces_stress(params, config, positions, species, cells, system_index, neighbors, shifts,
                         neighbor_mask, n_systems: int, head: int = 0, outgoing_slots=None):
    """Total energies (S,) eV, forces (N, 3) eV/Å = -dE/dx and stress (S, 3, 3) eV/Å^3 = (1/V) dE/d(strain).

    neighbors (N, K) senders of each atom's neighbour slots; shifts (N, K, 3) Å the periodic image
    offset of each slot (vector = r_atom - r_neighbor + shift); neighbor_mask (N, K).
    """

    def interaction_energy(positions, strain):
        atom_deform = deformation(strain)[system_index]
        pos = jnp.einsum("na,nab->nb", positions, atom_deform)
        shift = jnp.einsum("nka,nab->nkb", shifts, atom_deform)  # an edge belongs to its receiver's system
        senders = pos[neighbors] if outgoing_slots is None else ops.gather_neighbors(pos, neighbors, outgoing_slots)
        vectors = pos[:, None, :] - senders + shift
        e_node = node_energies(params, config, species, vectors, neighbors, neighbor_mask, head, outgoing_slots)
        return jax.ops.segment_sum(e_node, system_index, n_systems)

    e_inter, forces, stress = energies_forces_stress(interaction_energy, positions, cells, n_systems)
    e0 = jax.ops.segment_sum(reference_energies(config, species, head).astype(positions.dtype), system_index, n_systems)
    return e0 + e_inter, forces, stress
