"""Converted MACE models on disk, loadable without torch: DIR/config.json + DIR/params (orbax).

The directory is written under a temporary name and renamed when complete, so an interrupted
conversion never leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

FORMAT = "jaxmat-mace-1"


def _encode(value):
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value):
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _listify(tree):
    """Orbax restores lists as dicts keyed '0', '1', ...; turn those back into lists."""
    if isinstance(tree, dict):
        if tree and all(k.isdigit() for k in tree):
            return [_listify(tree[str(i)]) for i in range(len(tree))]
        return {k: _listify(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_listify(v) for v in tree]
    return np.asarray(tree)


def save(config: dict, params, directory: str | Path) -> Path:
    """Write a converted model to DIRECTORY (replacing an existing one only once the new one is complete)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps({"format": FORMAT, "config": _encode(config)}))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(partial / "params", jax.tree_util.tree_map(np.asarray, params))
    checkpointer.wait_until_finished()
    if directory.exists():
        shutil.rmtree(directory)
    partial.rename(directory)
    return directory


def load(directory: str | Path) -> tuple[dict, dict]:
    """(config, params) of a converted model directory."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    config_file = directory / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{directory} is not a converted MACE model (no config.json); convert one with "
                                f"python scripts/convert_mace.py MODEL.model {directory}")
    stored = json.loads(config_file.read_text())
    if stored.get("format") != FORMAT:
        raise ValueError(f"{config_file}: unknown format {stored.get('format')!r} (expected {FORMAT})")
    params = ocp.StandardCheckpointer().restore(directory / "params")
    return _decode(stored["config"]), _listify(params)
