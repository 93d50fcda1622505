"""Property heads on stoichiometry embeddings, trained per fold (reference evaluation protocol).

Predictor on the L2-normalised mean: Linear(200,128)-LeakyReLU-Linear(128,128)-LeakyReLU-Linear(128,1).
"representation": encoder frozen, only the predictor trains; "transfer": encoder and predictor train
together. Adam lr 1e-3, L2 weight decay 1e-6, L1 loss (regression) or binary cross-entropy
(classification), 300 epochs, batch 128 (32 below 1,000 training rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmat.polysrl.encoders import StoichiometryEncoder
from jaxmat.polysrl.graphs.batching import batch_stoichiometry
from jaxmat.polysrl.graphs.stoichiometry import stoichiometry_graph
from jaxmat.polysrl.layers import xavier


class Predictor(nn.Module):
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        x = nn.leaky_relu(nn.Dense(self.hidden, kernel_init=xavier)(x), 0.01)
        x = nn.leaky_relu(nn.Dense(self.hidden, kernel_init=xavier)(x), 0.01)
        return nn.Dense(1, kernel_init=xavier)(x)[:, 0]


@dataclass
class ProbeConfig:
    epochs: int = 300
    batch_size: int | None = None  # None: 128, or 32 below 1,000 training rows
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0


def _loss(prediction, target, mask, kind):
    if kind == "classification":
        per_row = optax.sigmoid_binary_cross_entropy(prediction, target)
    else:
        per_row = jnp.abs(prediction - target)
    return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1)


class StoichiometryProbe:
    """Encoder (+ its params) and a predictor, trained on formulas -> targets."""

    def __init__(self, encoder: StoichiometryEncoder, encoder_params, kind: str, protocol: str, config: ProbeConfig | None = None):
        if protocol not in ("representation", "transfer"):
            raise ValueError(f"protocol must be representation or transfer, got {protocol!r}")
        self.encoder, self.kind, self.protocol = encoder, kind, protocol
        self.config = config or ProbeConfig()
        self.encoder_params = encoder_params
        self.predictor = Predictor()
        self.dtype = np.dtype(encoder.param_dtype)

    def _graph_batch(self, graphs, batch_size, pad):
        return batch_stoichiometry(graphs, batch_size + 1, self.dtype, *pad)

    def _embed(self, params, graph):
        mu, _ = self.encoder.apply({"params": params}, graph)
        return mu

    def fit(self, formulas, targets):
        cfg = self.config
        graphs = [stoichiometry_graph(f) for f in formulas]
        n = len(graphs)
        batch_size = cfg.batch_size or (32 if n < 1000 else 128)
        max_u = max(len(g.numbers) for g in graphs)
        self._pad = (batch_size * max_u + 1, batch_size * max_u * max_u + 1)
        key = jax.random.PRNGKey(cfg.seed)
        predictor_params = self.predictor.init(key, jnp.zeros((1, self.encoder.hidden), self.dtype))["params"]
        params = {"predictor": predictor_params, "encoder": self.encoder_params}
        optimizer = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(cfg.lr))
        trainable = params if self.protocol == "transfer" else {"predictor": params["predictor"]}
        opt_state = optimizer.init(trainable)
        frozen_features = None
        if self.protocol == "representation":
            frozen_features = self._features(self.encoder_params, graphs, batch_size)

        def loss_fn(trainable, encoder_params, inputs, target, mask):
            encoder_params = trainable.get("encoder", encoder_params)
            features = self._embed(encoder_params, inputs) if self.protocol == "transfer" else inputs
            return _loss(self.predictor.apply({"params": trainable["predictor"]}, features), target, mask, self.kind)

        @jax.jit
        def step(trainable, opt_state, encoder_params, inputs, target, mask):
            loss, grads = jax.value_and_grad(loss_fn)(trainable, encoder_params, inputs, target, mask)
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, loss

        rng = np.random.default_rng(cfg.seed)
        targets = np.asarray(targets, self.dtype)
        for _ in range(cfg.epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                mask = np.zeros(batch_size + 1, self.dtype)
                mask[: len(rows)] = 1
                target = np.zeros(batch_size + 1, self.dtype)
                target[: len(rows)] = targets[rows]
                if self.protocol == "transfer":
                    inputs = self._graph_batch([graphs[i] for i in rows], batch_size, self._pad)
                else:
                    inputs = np.zeros((batch_size + 1, frozen_features.shape[1]), self.dtype)
                    inputs[: len(rows)] = frozen_features[rows]
                trainable, opt_state, _ = step(trainable, opt_state, self.encoder_params, inputs, target, mask)
        self.predictor_params = trainable["predictor"]
        if self.protocol == "transfer":
            self.encoder_params = trainable["encoder"]
        self._batch_size = batch_size
        return self

    def _features(self, encoder_params, graphs, batch_size):
        embed = jax.jit(self._embed)
        chunks = []
        max_u = max(len(g.numbers) for g in graphs)
        pad = (batch_size * max_u + 1, batch_size * max_u * max_u + 1)
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start : start + batch_size]
            chunks.append(np.asarray(embed(encoder_params, self._graph_batch(chunk, batch_size, pad)))[: len(chunk)])
        return np.concatenate(chunks)

    def predict(self, formulas) -> np.ndarray:
        """Predicted targets (regression) or probabilities of class 1 (classification)."""
        graphs = [stoichiometry_graph(f) for f in formulas]
        features = self._features(self.encoder_params, graphs, self._batch_size)
        output = np.asarray(self.predictor.apply({"params": self.predictor_params}, features))
        return 1.0 / (1.0 + np.exp(-output)) if self.kind == "classification" else output
