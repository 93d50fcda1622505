"""HEO run configs and their defaults, the one place for them: finetuning (configs/heo_finetune.yaml,
``python -m jaxmat.heo.finetune``) and evaluation (configs/heo_eval.yaml, ``python -m jaxmat.heo.evaluate``).
Sections are mappings checked against these tables; mace_run_train options pass through as given."""

from __future__ import annotations

from jaxmat.config import check_keys
from jaxmat.errors import ConfigError

MACE_MP_NAMES = ("small", "medium", "large", "small-0b", "medium-0b", "small-0b2", "medium-0b2", "large-0b2",
                 "medium-0b3", "medium-mpa-0", "medium-omat-0", "mace-matpes-pbe-0", "mace-matpes-r2scan-0")

FINETUNE_DEFAULTS = {
    "out": "runs/heo/finetune",
    "seed": 0,
    "device": "cpu",
    "data": {"dir": "runs/heo/curated", "energy_key": "DFT_energy", "forces_key": "DFT_forces", "max_train": None},
    "foundation": {"model": "base"},
    "base": {
        "curated_structures": 300,     # curated training structures (element coverage first), CHGNet-labelled
        "copies": 1,                   # rattled copies of each
        "rattle": [0.0, 0.1],          # Gaussian stdev range, Å
        "rocksalt_cells": 100,         # rattled rock-salt HEO cells
        "rocksalt_repeats": [[1, 1, 1], [2, 1, 1], [2, 2, 1]],
        "rocksalt_a": [4.1, 4.3],      # lattice parameter range, Å
        "rocksalt_rattle": [0.02, 0.15],
        "cations": ["Mg", "Co", "Ni", "Cu", "Zn"],
        "chgnet_batch_size": 32,
        "mace": {},                    # mace_run_train options of the base model (merged over BASE_MACE)
    },
    "finetune": {"mace": {}},          # mace_run_train options of the finetuning stage (merged over FINETUNE_MACE)
}

BASE_MACE = {
    "model": "MACE", "hidden_irreps": "32x0e", "max_ell": 2, "correlation": 2, "num_interactions": 2, "r_max": 5.0,
    "E0s": "average", "energy_weight": 1.0, "forces_weight": 10.0, "lr": 0.01, "batch_size": 5,
    "max_num_epochs": 12, "scaling": "rms_forces_scaling", "ema": True, "ema_decay": 0.99, "swa": False,
    "valid_fraction": 0.1, "default_dtype": "float64",
}

FINETUNE_MACE = {  # the reference's finetuning settings
    "E0s": "foundation", "energy_weight": 1.0, "forces_weight": 10.0, "lr": 1e-4, "batch_size": 5, "max_num_epochs": 10,
    "scaling": "rms_forces_scaling", "default_dtype": "float64", "multiheads_finetuning": False,
    "foundation_model_elements": True, "swa": False, "ema": True, "ema_decay": 0.99,
}


def resolve_finetune_config(config: dict) -> dict:
    """The finetune config with defaults filled in; unknown keys refused, naming them."""
    config = check_keys(config, FINETUNE_DEFAULTS, "finetune config")
    for section in ("data", "foundation", "base", "finetune"):
        config[section] = check_keys(config[section], FINETUNE_DEFAULTS[section], section)
    config["base"]["mace"] = {**BASE_MACE, **(config["base"]["mace"] or {})}
    config["finetune"]["mace"] = {**FINETUNE_MACE, **(config["finetune"]["mace"] or {})}
    if not config["foundation"]["model"]:
        raise ConfigError("foundation.model must be 'base', a MACE-MP name or a model path")
    return config


EVALUATION_DEFAULTS = {
    "backend": "torch",         # MACE implementation: torch (mace-torch, batched) or jax (jaxmat's JAX MACE)
    "dtype": "float64",
    "head": None,               # head of multi-head models (default: the only one, else the one named 'default')
    "seed": 0,
    "reference": "chgnet",      # independent reference model: chgnet, a MACE .model path or foundation key, or none
    "unsupported": "skip",      # frames with elements a model lacks: skip (counted in the report) or error
    "max_atoms": None,          # atom budget of one relaxation batch (default: the runner's)
    "test": {"split": "test", "max_frames": None, "batch_atoms": 2048},
    "in_distribution": {"split": "test", "count": 24, "rattle": 0.05, "optimizer": "lbfgs", "fmax": 0.05, "max_steps": 200},
    "substitution": {"optimizer": "lbfgs", "fmax": 0.05, "max_steps": 100, "relax_cell": True},
}


def resolve_evaluation_config(config: dict) -> dict:
    """The evaluation config with defaults filled in; unknown keys refused, naming them."""
    config = check_keys(config, EVALUATION_DEFAULTS, "evaluation config")
    for section in ("test", "in_distribution", "substitution"):
        config[section] = check_keys(config[section], EVALUATION_DEFAULTS[section], section)
    if config["unsupported"] not in ("skip", "error"):
        raise ConfigError(f"unsupported must be 'skip' or 'error', got {config['unsupported']!r}")
    return config
