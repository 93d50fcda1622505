"""Use a trained (or imported) stoichiometry encoder: formulas -> Gaussian embeddings (mu, sigma)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from jaxmat.errors import JaxmatInputError
from jaxmat.polysrl.config import ModelConfig
from jaxmat.polysrl.graphs.batching import batch_stoichiometry, padded_size
from jaxmat.polysrl.graphs.stoichiometry import stoichiometry_graph


class StoichiometryEmbedder:
    """A stoichiometry encoder with its parameters.

    ``embed(formulas)`` -> (mu, sigma): numpy arrays (n, hidden) of the config's dtype; mu is L2-normalised,
    sigma = exp(logsigma) (zeros for deterministic / mean-only encoders). Bad formulas raise FormulaError
    naming the formula. Built and run in ``config.scope()``: no global precision switch needed.
    """

    def __init__(self, config: ModelConfig, params: dict):
        self.config = config
        with config.scope():
            self.dtype = config.jnp_dtype
            self.params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, self.dtype), params)
            self.module = config.stoichiometry_encoder()
        self._apply = jax.jit(lambda p, g: self.module.apply({"params": p}, g))

    def embed(self, formulas: Sequence[str] | str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(formulas, str):
            formulas = [formulas]
        graphs = [stoichiometry_graph(f) for f in formulas]  # validates every formula first
        mus, sigmas = [], []
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start : start + batch_size]
            n_graph = padded_size(len(chunk) + 1)
            batch = batch_stoichiometry(chunk, n_graph, np.dtype(self.dtype))
            with self.config.scope():
                mu, logsigma = self._apply(self.params, batch)
            mus.append(np.asarray(mu[: len(chunk)]))
            sigmas.append(np.zeros_like(mus[-1]) if logsigma is None else np.exp(np.asarray(logsigma[: len(chunk)])))
        hidden = self.config.hidden
        if not mus:
            return np.zeros((0, hidden)), np.zeros((0, hidden))
        return np.concatenate(mus), np.concatenate(sigmas)


def load_model_config(workdir) -> ModelConfig:
    """The model config of a training run (WORKDIR/config.yaml)."""
    config_path = Path(workdir) / "config.yaml"
    if not config_path.exists():
        raise JaxmatInputError(f"{config_path} not found: is {workdir} a jaxmat training directory "
                               f"(python -m jaxmat.train --workdir {workdir})?")
    try:
        saved = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise JaxmatInputError(f"{config_path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise JaxmatInputError(f"{config_path} has no 'model' section: is {workdir} a jaxmat training directory?")
    return ModelConfig.from_dict(saved["model"])


def load_encoder(workdir, epoch: int | None = None) -> StoichiometryEmbedder:
    """The stoichiometry encoder of a training run (WORKDIR/config.yaml + the latest good orbax checkpoint,
    or that of ``epoch``). A folder without them, or only damaged ones, raises an input error naming it."""
    from jaxmat.polysrl.checkpoint import restore_params

    config = load_model_config(workdir)
    with config.scope():  # float64 checkpoints restore as float64 (and match their checksums) only inside it
        params, _, _ = restore_params(workdir, epoch)
    return StoichiometryEmbedder(config, params["stoichiometry"])


def import_reference_checkpoint(path, dtype: str = "float64") -> StoichiometryEmbedder:
    """Load a PolySRL reference PyTorch stoichiometry-encoder state dict (.pt).

    Accepts both PyG layouts of the GCN weights, keys with or without a 'sto.' prefix, and mean-only
    checkpoints (the published baselines), which give deterministic embedders (sigma = 0). ``dtype``:
    float64 (the reference's numbers; no global precision switch needed) or float32.
    """
    import torch

    from jaxmat.polysrl.reference import stoichiometry_mapping, tree_from_reference

    ModelConfig.from_dict({"dtype": dtype})  # a bad dtype is refused before any work
    if not Path(path).is_file():
        raise JaxmatInputError(f"reference checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, a pickle of arbitrary objects, not a torch file at all
        message = str(error).splitlines()[0] if str(error) else ""
        raise JaxmatInputError(f"cannot read {path} as a PyTorch state dict: {type(error).__name__}: {message[:200]}") from None
    if not isinstance(state, dict) and hasattr(state, "state_dict"):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise JaxmatInputError(f"{path} holds a {type(state).__name__}, not a PolySRL stoichiometry-encoder state dict")
    if any(str(k).startswith("sto.") for k in state):
        state = {k[4:]: v for k, v in state.items() if str(k).startswith("sto.")}
    state = {k: v.detach().cpu().double().numpy() for k, v in state.items() if hasattr(v, "detach")}
    if "gnn.convs.0.weight" not in state and "gnn.convs.0.lin.weight" not in state:
        raise JaxmatInputError(f"{path} is not a PolySRL stoichiometry-encoder state dict (no gnn.convs.0 weights)")
    if "mean_lin.weight" not in state:
        raise JaxmatInputError(f"{path} is not a PolySRL stoichiometry-encoder state dict (no mean_lin weights)")
    old_layout = "gnn.convs.0.weight" in state
    probabilistic = "var_lin.weight" in state
    layers = len({k.split(".")[2] for k in state if k.startswith("gnn.convs.")})
    hidden = state["mean_lin.weight"].shape[0]
    config = ModelConfig.from_dict({"hidden": hidden, "stoichiometry_layers": layers, "probabilistic": probabilistic,
                                    "dtype": dtype})
    try:
        params = tree_from_reference(state, stoichiometry_mapping(layers, probabilistic, old_layout), np.float64)
    except KeyError as error:
        raise JaxmatInputError(f"{path} is not a complete PolySRL stoichiometry-encoder state dict: {error.args[0]}") from None
    return StoichiometryEmbedder(config, params)
