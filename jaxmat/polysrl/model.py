"""The PolySRL model: both encoders plus the loss's learnable scale (negative_scale) and shift."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmat.errors import ConfigError
from jaxmat.polysrl.encoders import StoichiometryEncoder, StructureEncoder
from jaxmat.polysrl.graphs.batching import PolySRLBatch
from jaxmat.polysrl.loss import LossParts, sample_embeddings, soft_contrastive_loss
from jaxmat.precision import float64_enabled


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss settings; defaults are the reference's (sh/train_PolySRL.sh)."""

    hidden: int = 200
    stoichiometry_layers: int = 3
    structure_layers: int = 3
    set2set_steps: int = 2
    n_samples: int = 8
    logsigma_clip: float | None = 40.0
    probabilistic: bool = True  # False: deterministic ablation (sigma fixed at 0, no KL)
    use_species: bool = False  # structure encoder sees element types (reference: geometry only)
    shift: float = 20.0
    negative_scale: float = 20.0
    kl_beta: float = 1e-8
    reduction: str = "sum"  # reference: sum over all pairs; "mean" averages over valid pairs
    kl: str = "reference"  # reference quirk (sample mean, logsigma as log-variance) | "log_std"
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, values: dict | None) -> "ModelConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        config = cls(**values)
        if config.reduction not in ("sum", "mean"):
            raise ConfigError(f"model.reduction must be sum or mean, got {config.reduction!r}")
        if config.kl not in ("reference", "log_std"):
            raise ConfigError(f"model.kl must be reference or log_std, got {config.kl!r}")
        if config.dtype not in ("float32", "float64"):
            raise ConfigError(f"model.dtype must be float32 or float64, got {config.dtype!r}")
        return config

    def to_dict(self) -> dict:
        return asdict(self)

    def stoichiometry_encoder(self) -> StoichiometryEncoder:
        """The stoichiometry encoder module of this config."""
        return StoichiometryEncoder(self.hidden, self.stoichiometry_layers, self.set2set_steps, self.logsigma_clip,
                                    self.probabilistic, self.jnp_dtype)

    @property
    def float64(self) -> bool:
        return self.dtype == "float64"

    @property
    def jnp_dtype(self):
        """The parameter dtype. float64 needs JAX float64 on, which this never switches itself: the commands
        call jaxmat.precision.use_float64(), the library runs in jaxmat.precision.float64_scope(config.float64)."""
        if self.float64 and not float64_enabled():
            raise ConfigError("model.dtype float64 needs JAX float64: call jaxmat.precision.use_float64() first "
                              "or work inside jaxmat.precision.float64_scope()")
        return jnp.float64 if self.float64 else jnp.float32


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
    """Initial parameters (torch-like initialisation) for a model of this config."""
    return PolySRL(config).init(key, batch)["params"]


def loss_with_noise(params, config: ModelConfig, batch: PolySRLBatch, eps) -> tuple[jnp.ndarray, tuple[LossParts, dict]]:
    """Total loss and its parts for given sampling noise eps (N, K, D); also returns mu, logsigma, s, z."""
    mu, logsigma, s, shift, negative_scale = PolySRL(config).apply({"params": params}, batch)
    if config.probabilistic:
        z = sample_embeddings(mu, logsigma, eps)
    else:
        z = mu[:, None, :]
    parts = soft_contrastive_loss(
        z, s, mu, logsigma, batch.formula_ids, batch.graph_mask, shift, negative_scale,
        config.kl_beta if config.probabilistic else 0.0, config.reduction, config.kl,
    )
    return parts.total, (parts, {"mu": mu, "logsigma": logsigma, "structure": s, "z": z})


def sample_noise(config: ModelConfig, key, n_rows: int):
    """Standard normal noise (n_rows, n_samples, hidden) in the model dtype."""
    return jax.random.normal(key, (n_rows, config.n_samples, config.hidden), config.jnp_dtype)
