"""PolySRL run configs, typed, with their defaults: the one place for them.

A YAML run config (configs/polysrl.yaml) has the sections ``seed``, ``data`` (:class:`DataConfig`),
``model`` (:class:`ModelConfig`) and ``train`` (:class:`TrainConfig`); :func:`resolve_config` fills the
defaults and refuses unknown keys, naming them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import jax.numpy as jnp

from jaxmat.errors import ConfigError
from jaxmat.precision import float64_enabled, float64_scope


def section(cls, values: dict | None, name: str):
    """A config dataclass from a mapping; unknown keys are refused with the known ones listed."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True)
class DataConfig:
    """Where the training structures come from (see jaxmat.data.sources) and how graphs are built."""

    source: str = "embedded"
    path: str | None = None
    limit: int | None = None
    cutoff: float = 8.0  # Å, crystal-graph neighbours
    max_neighbors: int = 12
    merge_equivalent_edges: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and checkpointing (AdamW; the reference's values)."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 2.0
    keep_checkpoints: int = 3


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
        config = section(cls, values, "model")
        if config.reduction not in ("sum", "mean"):
            raise ConfigError(f"model.reduction must be sum or mean, got {config.reduction!r}")
        if config.kl not in ("reference", "log_std"):
            raise ConfigError(f"model.kl must be reference or log_std, got {config.kl!r}")
        if config.dtype not in ("float32", "float64"):
            raise ConfigError(f"model.dtype must be float32 or float64, got {config.dtype!r}")
        return config

    def to_dict(self) -> dict:
        return asdict(self)

    def stoichiometry_encoder(self):
        """The stoichiometry encoder module (flax) of this config."""
        from jaxmat.polysrl.encoders import StoichiometryEncoder

        return StoichiometryEncoder(self.hidden, self.stoichiometry_layers, self.set2set_steps, self.logsigma_clip,
                                    self.probabilistic, self.jnp_dtype)

    @property
    def float64(self) -> bool:
        return self.dtype == "float64"

    def scope(self):
        """The context a model of this config is built and run in: jaxmat.precision.float64_scope for a
        float64 config (the caller's process-wide JAX setting is left alone), nothing for float32. Every
        public PolySRL call enters it itself."""
        return float64_scope(self.float64)

    @property
    def jnp_dtype(self):
        """The parameter dtype. Read inside :meth:`scope` (a guard: float64 arrays cannot be made outside it)."""
        if self.float64 and not float64_enabled():
            raise ConfigError("model.dtype float64 used outside its precision scope: run it inside "
                              "ModelConfig.scope() (jaxmat.precision.float64_scope), as the public calls do")
        return jnp.float64 if self.float64 else jnp.float32


def resolve_config(config: dict) -> dict:
    """Full run config (plain mapping, as saved in WORKDIR/config.yaml) with defaults filled; unknown keys refused."""
    unknown = sorted(set(config) - {"seed", "data", "model", "train"})
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}")
    resolved = {
        "seed": int(config.get("seed", 0)),
        "data": asdict(section(DataConfig, config.get("data"), "data")),
        "model": ModelConfig.from_dict(config.get("model")).to_dict(),
        "train": asdict(section(TrainConfig, config.get("train"), "train")),
    }
    if int(resolved["train"]["batch_size"]) < 2:
        raise ConfigError("train.batch_size must be at least 2 (the loss contrasts rows of a batch)")
    return resolved
