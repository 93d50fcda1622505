"""PolySRL encoders as Flax modules on jraph graphs.

StoichiometryEncoder: formula graph -> (mu (L2-normalised), logsigma), both (n_graph, hidden).
StructureEncoder:     crystal graph -> L2-normalised structure embedding (n_graph, hidden).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxmat.polysrl.layers import MLP, EdgeMLP, GCNConv, Set2Set, l2_normalize, xavier

GAUSSIAN_CENTRES = np.arange(0.0, 8.2, 0.2)  # Å, 41 centres as in the reference
GAUSSIAN_WIDTH = 0.2  # Å


def node_graph_ids(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """Graph index of every node (padding nodes belong to the padding graph)."""
    n_graph = graph.n_node.shape[0]
    total = jax.tree_util.tree_leaves(graph.nodes)[0].shape[0]
    return jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=total)


def gaussian_expansion(distance, centres=GAUSSIAN_CENTRES, width=GAUSSIAN_WIDTH):
    """exp(-(d - mu_k)^2 / width^2) for each centre mu_k (Å)."""
    centres = jnp.asarray(centres, distance.dtype)
    return jnp.exp(-((distance[:, None] - centres) ** 2) / width**2)


class StoichiometryEncoder(nn.Module):
    """GCN (3 residual layers, jumping knowledge) -> count-weighted nodes -> Set2Set heads.

    mu = normalize(Linear(Set2Set_mean(w)) + sum(w)); logsigma = Linear(Set2Set_var(w)) + sum(w),
    clipped at ``logsigma_clip`` (None: no clip); w = h * count. ``probabilistic=False`` skips
    the sigma branch (deterministic ablation / mean-only reference checkpoints).
    """

    hidden: int = 200
    num_layers: int = 3
    set2set_steps: int = 2
    logsigma_clip: float | None = 40.0
    probabilistic: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        features = graph.nodes["features"]
        counts = graph.nodes["counts"]
        n_graph = graph.n_node.shape[0]
        segments = node_graph_ids(graph)
        if features.shape[-1] != self.hidden:
            features = nn.Dense(self.hidden, kernel_init=xavier, param_dtype=self.param_dtype, name="lin_ih")(features)
        ones = jnp.ones(graph.senders.shape, features.dtype)
        layers = [features]
        for index in range(self.num_layers):
            conv = GCNConv(self.hidden, self.param_dtype, name=f"conv_{index}")
            layers.append(jax.nn.elu(conv(layers[-1], graph.senders, graph.receivers, ones)) + layers[-1])
        h = nn.Dense(self.hidden, kernel_init=xavier, param_dtype=self.param_dtype, name="jk_lin")(jnp.concatenate(layers, -1))
        weighted = h * counts[:, None]
        pooled = jax.ops.segment_sum(weighted, segments, n_graph)

        def head(name):
            readout = Set2Set(self.hidden, self.set2set_steps, self.param_dtype, name=f"{name}_set2set")(weighted, segments, n_graph)
            return nn.Dense(self.hidden, kernel_init=xavier, param_dtype=self.param_dtype, name=f"{name}_lin")(readout) + pooled

        mu = l2_normalize(head("mean"))
        if not self.probabilistic:
            return mu, None
        logsigma = head("var")
        if self.logsigma_clip is not None:
            logsigma = jnp.minimum(logsigma, self.logsigma_clip)
        return mu, logsigma


class StructureEncoder(nn.Module):
    """Encode-process graph network on the crystal graph, sum pooled and L2-normalised.

    Node input: one learnable vector shared by all atoms (reference default: geometry only), or a
    per-element embedding with ``use_species=True``. Edge input: Gaussian expansion of distances.
    """

    hidden: int = 200
    num_layers: int = 3
    use_species: bool = False
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        numbers = graph.nodes["numbers"]
        distance = graph.edges["distance"]
        n_graph, n_node = graph.n_node.shape[0], numbers.shape[0]
        dtype = distance.dtype
        if self.use_species:
            x = nn.Embed(119, self.hidden, param_dtype=self.param_dtype, name="species_embedding")(numbers).astype(dtype)
        else:
            shared = self.param("node_embedding", nn.initializers.normal(1.0), (self.hidden,), self.param_dtype)
            x = jnp.broadcast_to(shared.astype(dtype), (n_node, self.hidden))
        x = MLP(self.hidden, self.hidden, False, self.param_dtype, name="node_encoder")(x)
        e = MLP(self.hidden, self.hidden, False, self.param_dtype, name="edge_encoder")(gaussian_expansion(distance))
        senders, receivers = graph.senders, graph.receivers
        multiplicity = graph.edges.get("multiplicity")  # merged equivalent edges count this many times
        multiplicity = None if multiplicity is None else multiplicity.astype(dtype)
        for index in range(self.num_layers):
            edge_mlp = EdgeMLP(2 * self.hidden, self.hidden, self.param_dtype, name=f"edge_mlp_{index}")
            node_mlp = MLP(2 * self.hidden, self.hidden, True, self.param_dtype, name=f"node_mlp_{index}")
            if index == self.num_layers - 1:
                # the last edge update only feeds the node sums: aggregate before its final linear layer
                incoming = edge_mlp(x, e, senders, receivers, multiplicity, aggregate=True)
            else:
                e_new = edge_mlp(x, e, senders, receivers)
                weighted = e_new if multiplicity is None else e_new * multiplicity[:, None]
                incoming = jax.ops.segment_sum(weighted, receivers, n_node)
                e = e + e_new
            x = x + node_mlp(jnp.concatenate([x, incoming], -1))
        crystal = jax.ops.segment_sum(x, node_graph_ids(graph), n_graph)
        return l2_normalize(crystal)
