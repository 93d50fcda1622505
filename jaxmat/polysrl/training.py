"""Optimiser and the jit-compiled PolySRL train step (value_and_grad + clip + Adam)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmat.polysrl.graphs.batching import PolySRLBatch
from jaxmat.polysrl.model import ModelConfig, loss_with_noise, sample_noise


def global_norm(tree) -> jnp.ndarray:
    """L2 norm over all leaves, computed on rescaled leaves so it cannot overflow."""
    leaves = jax.tree_util.tree_leaves(tree)
    scale = jnp.maximum(jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves])), jnp.finfo(leaves[0].dtype).tiny)
    return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: g * min(1, max_norm / (||g|| + 1e-6))."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        coef = jnp.minimum(max_norm / (global_norm(updates) + 1e-6), 1.0)
        return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(lr: float = 5e-5, max_grad_norm: float | None = 2.0, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """torch.optim.Adam (L2 weight decay added to the gradient) after global-norm clipping."""
    parts = []
    if max_grad_norm:
        parts.append(clip_by_global_norm_torch(max_grad_norm))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))
    return optax.chain(*parts)


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jnp.ndarray


def step_metrics(parts, outputs: dict, graph_mask, grads, params) -> dict:
    """Metrics of one step: loss parts, gradient norm, mean (log-)sigma of real rows, updated c and b."""
    mask = graph_mask[:, None]
    n_entries = jnp.maximum(jnp.sum(graph_mask) * outputs["mu"].shape[-1], 1)
    metrics = dict(parts._asdict())
    metrics["grad_norm"] = global_norm(grads)
    if outputs["logsigma"] is not None:
        metrics["mean_logsigma"] = jnp.sum(jnp.where(mask, outputs["logsigma"], 0.0)) / n_entries
        metrics["mean_sigma"] = jnp.sum(jnp.where(mask, jnp.exp(outputs["logsigma"]), 0.0)) / n_entries
    metrics["c"] = params["negative_scale"][0]
    metrics["b"] = params["shift"][0]
    return metrics


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation):
    """Pure step (state, batch, noise_key) -> (state, metrics); wrap with jax.jit."""

    def train_step(state: TrainState, batch: PolySRLBatch, key):
        eps = sample_noise(config, key, batch.graph_mask.shape[0])
        grad_fn = jax.value_and_grad(loss_with_noise, has_aux=True)
        (_, (parts, outputs)), grads = grad_fn(state.params, config, batch, eps)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = step_metrics(parts, outputs, batch.graph_mask, grads, params)
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step
