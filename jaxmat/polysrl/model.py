"""The PolySRL model: both encoders plus the loss's learnable scale (negative_scale) and shift."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmat.polysrl.config import ModelConfig
from jaxmat.polysrl.encoders import StructureEncoder
from jaxmat.polysrl.graphs.batching import PolySRLBatch
from jaxmat.polysrl.loss import LossParts, sample_embeddings, soft_contrastive_loss


class PolySRL(nn.Module):
    """Stoichiometry encoder + structure encoder + loss scalars (shape (1,) as in the reference)."""

    config: ModelConfig

    def setup(self):
        c, dtype = self.config, self.config.jnp_dtype
        self.stoichiometry = c.stoichiometry_encoder()
        self.structure = StructureEncoder(c.hidden, c.structure_layers, c.use_species, dtype)
        self.shift = self.param("shift", nn.initializers.constant(c.shift), (1,), dtype)
        self.negative_scale = self.param("negative_scale", nn.initializers.constant(c.negative_scale), (1,), dtype)

    def __call__(self, batch: PolySRLBatch):
        mu, logsigma = self.stoichiometry(batch.stoichiometry)
        return mu, logsigma, self.structure(batch.crystal), self.shift[0], self.negative_scale[0]


def init_params(config: ModelConfig, batch: PolySRLBatch, key) -> dict:
    """Initial parameters (torch-like initialisation) for a model of this config. Compiled: the same
    values as op-by-op (checked bit for bit), in a third of the time."""
    return jax.jit(lambda k, b: PolySRL(config).init(k, b)["params"])(key, batch)


def encode(params, config: ModelConfig, batch: PolySRLBatch):
    """(mu, logsigma, structure embeddings) of a batch's rows, each (n_graph, hidden)."""
    mu, logsigma, s, _, _ = PolySRL(config).apply({"params": params}, batch)
    return mu, logsigma, s


def loss_from_embeddings(config: ModelConfig, mu, logsigma, s, shift, negative_scale, formula_ids, graph_mask, eps):
    """Total loss and parts of a batch given its embeddings (rows (N, hidden)) and the loss scalars."""
    if config.probabilistic:
        z = sample_embeddings(mu, logsigma, eps)
    else:
        z = mu[:, None, :]
    parts = soft_contrastive_loss(
        z, s, mu, logsigma, formula_ids, graph_mask, shift, negative_scale,
        config.kl_beta if config.probabilistic else 0.0, config.reduction, config.kl,
    )
    return parts.total, (parts, {"mu": mu, "logsigma": logsigma, "structure": s, "z": z})


def loss_with_noise(params, config: ModelConfig, batch: PolySRLBatch, eps) -> tuple[jnp.ndarray, tuple[LossParts, dict]]:
    """Total loss and its parts for given sampling noise eps (N, K, D); also returns mu, logsigma, s, z."""
    mu, logsigma, s, shift, negative_scale = PolySRL(config).apply({"params": params}, batch)
    return loss_from_embeddings(config, mu, logsigma, s, shift, negative_scale, batch.formula_ids, batch.graph_mask, eps)


def sample_noise(config: ModelConfig, key, n_rows: int):
    """Standard normal noise (n_rows, n_samples, hidden) in the model dtype."""
    return jax.random.normal(key, (n_rows, config.n_samples, config.hidden), config.jnp_dtype)
