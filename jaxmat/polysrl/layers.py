"""Building blocks shared by the PolySRL encoders, laid out like their PyTorch counterparts so
reference weights import one-to-one (Dense kernels are (in, out) = torch weight transposed)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

xavier = nn.initializers.xavier_uniform()
Dtype = Any


def l2_normalize(x, eps: float = 1e-12):
    """x / max(||x||, eps) along the last axis (torch.nn.functional.normalize)."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def segment_softmax(logits, segment_ids, num_segments):
    """Softmax within segments: exp(x - max) / (sum + 1e-16), as torch_geometric.utils.softmax."""
    maxima = jax.ops.segment_max(logits, segment_ids, num_segments)
    shifted = jnp.exp(logits - jax.lax.stop_gradient(maxima)[segment_ids])
    totals = jax.ops.segment_sum(shifted, segment_ids, num_segments)
    return shifted / (totals[segment_ids] + 1e-16)


class PReLU(nn.Module):
    """Parametric ReLU with one shared slope (init 0.25)."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        slope = self.param("weight", nn.initializers.constant(0.25), (1,), self.param_dtype)
        return jnp.where(x >= 0, x, slope[0] * x)


class TorchLSTMCell(nn.Module):
    """One LSTM step with PyTorch's layout: gates = x W_ih^T + b_ih + h W_hh^T + b_hh, order i, f, g, o.

    Weights init U(-1/sqrt(H), 1/sqrt(H)) like torch.nn.LSTM.
    """

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, carry):
        h, c = carry
        bound = 1.0 / jnp.sqrt(self.features)

        def uniform(key, shape, dtype):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        w_ih = self.param("weight_ih", uniform, (4 * self.features, x.shape[-1]), self.param_dtype)
        w_hh = self.param("weight_hh", uniform, (4 * self.features, self.features), self.param_dtype)
        b_ih = self.param("bias_ih", uniform, (4 * self.features,), self.param_dtype)
        b_hh = self.param("bias_hh", uniform, (4 * self.features,), self.param_dtype)
        gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c


class Set2Set(nn.Module):
    """Set2Set readout (Vinyals et al. 2016) over node segments: returns (num_segments, 2 * features)."""

    features: int
    steps: int = 2
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, segment_ids, num_segments):
        lstm = TorchLSTMCell(self.features, self.param_dtype, name="lstm")
        h = jnp.zeros((num_segments, self.features), x.dtype)
        c = jnp.zeros_like(h)
        q_star = jnp.zeros((num_segments, 2 * self.features), x.dtype)
        for _ in range(self.steps):
            h, c = lstm(q_star, (h, c))
            scores = jnp.sum(x * h[segment_ids], axis=-1)
            attention = segment_softmax(scores, segment_ids, num_segments)
            readout = jax.ops.segment_sum(attention[:, None] * x, segment_ids, num_segments)
            q_star = jnp.concatenate([h, readout], axis=-1)
        return q_star


class GCNConv(nn.Module):
    """Graph convolution with symmetric normalisation (Kipf & Welling): sum_j h_j W / sqrt(d_i d_j) + b.

    The stoichiometry graphs already carry every self-loop, so none is added.
    """

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, senders, receivers, edge_weight):
        n = h.shape[0]
        transformed = nn.Dense(self.features, use_bias=False, kernel_init=xavier, param_dtype=self.param_dtype, name="lin")(h)
        degree = jax.ops.segment_sum(edge_weight, receivers, n)
        inv_sqrt = jnp.where(degree > 0, 1.0 / jnp.sqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
        norm = inv_sqrt[senders] * edge_weight * inv_sqrt[receivers]
        out = jax.ops.segment_sum(transformed[senders] * norm[:, None], receivers, n)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return out + bias


class DenseParams(nn.Module):
    """The parameters of a Dense layer (kernel (in, out), bias) without applying it."""

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", xavier, (in_features, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return kernel, bias


class EdgeMLP(nn.Module):
    """MLP([x_sender, x_receiver, e]) = Linear-LayerNorm-PReLU-Linear, without building the (E, 3H) input.

    The first layer is split by blocks: (x W_s)[senders] + (x W_r)[receivers] + e W_e + b, which does
    the node products once per atom instead of once per edge. Same parameters and same function as
    MLP(hidden, out, layer_norm=True) applied to the concatenation.

    With ``aggregate=True`` it returns sum over edges into each receiver of weight * output, (n_node, out),
    applying the last (linear) layer after the sum: the per-edge output is never formed.
    """

    hidden: int
    out: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, e, senders, receivers, weights=None, aggregate: bool = False):
        width = x.shape[-1]
        kernel, bias = DenseParams(self.hidden, self.param_dtype, name="lin_in")(2 * width + e.shape[-1])
        h = (x @ kernel[:width])[senders] + (x @ kernel[width : 2 * width])[receivers] + e @ kernel[2 * width :] + bias
        h = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, param_dtype=self.param_dtype, name="norm")(h)
        h = PReLU(self.param_dtype, name="act")(h)
        out_kernel, out_bias = DenseParams(self.out, self.param_dtype, name="lin_out")(self.hidden)
        if not aggregate:
            return h @ out_kernel + out_bias
        weights = jnp.ones(h.shape[0], h.dtype) if weights is None else weights
        n_node = x.shape[0]
        summed = jax.ops.segment_sum(h * weights[:, None], receivers, n_node)
        return summed @ out_kernel + jax.ops.segment_sum(weights, receivers, n_node)[:, None] * out_bias


class MLP(nn.Module):
    """Linear - [LayerNorm] - PReLU - Linear, torch-initialised (Xavier-uniform weights, zero biases)."""

    hidden: int
    out: int
    layer_norm: bool = False
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.hidden, kernel_init=xavier, param_dtype=self.param_dtype, name="lin_in")(x)
        if self.layer_norm:
            x = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, param_dtype=self.param_dtype, name="norm")(x)
        x = PReLU(self.param_dtype, name="act")(x)
        return nn.Dense(self.out, kernel_init=xavier, param_dtype=self.param_dtype, name="lin_out")(x)
