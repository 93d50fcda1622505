"""YAML run configs with command-line overrides (``--set train.epochs=3``)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from jaxmat.errors import ConfigError


def load_config(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return config


def apply_overrides(config: dict, overrides: list[str] | None) -> dict:
    """Return a copy with each 'dotted.key=value' applied; values are parsed as YAML (3 -> int, null -> None)."""
    config = copy.deepcopy(config)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = config
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return config


def check_keys(section: dict, allowed: dict, name: str) -> dict:
    """Fill defaults and refuse unknown keys of a config section."""
    unknown = sorted(set(section or {}) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {unknown}; known: {sorted(allowed)}")
    return {**allowed, **(section or {})}
