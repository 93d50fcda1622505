"""The state the HEO samplers share (:mod:`jaxmat.heo.anneal`, :mod:`jaxmat.heo.hybrid`, :mod:`jaxmat.heo.relaxed`):
input checks, the result of a run, the first-shell short-range-order observer and the checkpoint (one .npz of the
state's arrays and the traces, with a manifest of what it must match to be resumed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.errors import JaxmatInputError
from jaxmat.heo import sro, swap

log = logging.getLogger(__name__)

STATE_KEYS = ("labels", "energy", "best_energy", "best_labels", "attempted", "accepted", "exchanged", "keys", "sweep")
TRACE_KEYS = ("energy", "acceptance", "observed")


@dataclass
class AnnealResult:
    """Per replica (R = structures x temperatures, structure-major): input_index, temperature (K), energy and
    best_energy (eV), acceptance, exchanges (accepted replica exchanges); last and best (ase.Atoms); per sweep: trace_energy, trace_acceptance (S, R),
    alpha (S, R, L, L) for the cation symbols ``cations`` (L,)."""

    input_index: np.ndarray
    temperature: np.ndarray
    energy: np.ndarray
    best_energy: np.ndarray
    acceptance: np.ndarray
    exchanges: np.ndarray
    last: list
    best: list
    trace_energy: np.ndarray
    trace_acceptance: np.ndarray
    alpha: np.ndarray
    cations: list


def check_inputs(structures, force_field, temperatures) -> None:
    """JaxmatInputError for what the sampler cannot run: no structures, a temperature <= 0 K, a structure without
    cations or with a single cation species, an element the model does not know, a model without device_model."""
    from ase.data import chemical_symbols

    from jaxmat.forcefields.base import unsupported_elements

    if not len(structures):
        raise JaxmatInputError("no structures to anneal")
    temperatures = np.asarray(temperatures, float)
    if temperatures.size == 0 or not np.all(np.isfinite(temperatures)) or np.any(temperatures <= 0):
        raise JaxmatInputError(f"temperatures must be positive (K), not {temperatures.tolist()}")
    if not callable(getattr(force_field, "device_model", None)) or "joint_embedding" in getattr(force_field, "config", {}):
        raise JaxmatInputError(f"{type(force_field).__name__} has no device model: swap Monte Carlo needs a JAX force field")
    for k, atoms in enumerate(structures):
        kinds = sorted({int(z) for z in atoms.numbers if int(z) not in swap.ANIONS})
        if not kinds:
            raise JaxmatInputError(f"structure {k} ({atoms.get_chemical_formula()}) has no cations to swap")
        if len(kinds) == 1:
            raise JaxmatInputError(f"structure {k} ({atoms.get_chemical_formula()}) has one cation species only: nothing to swap")
        missing = unsupported_elements(force_field, atoms.numbers)
        if missing:
            raise JaxmatInputError(f"structure {k}: element(s) {[chemical_symbols[z] for z in missing]} unknown to the model")


def manifest(structures, temperatures, seed, attempts, chunk, model_id, exchange, **settings) -> dict:
    """What a checkpoint must match to be resumed: inputs, seed and settings (settings: e.g. the hybrid's MD ones)."""
    from jaxmat.fingerprint import fingerprint

    return {"structures": fingerprint(structures), "temperatures": [float(t) for t in temperatures], "seed": int(seed),
            "attempts": int(attempts), "checkpoint_every": int(chunk), "model": str(model_id), "exchange": bool(exchange), **settings}


def save(path, state, traces, manifest) -> None:
    from jaxmat.files import write_atomically

    arrays = {f"state_{k}": np.asarray(v) for k, v in state.items()}  # the sampler's keys and any a caller adds (hybrid)
    arrays |= {f"trace_{k}": np.concatenate(v) if v else np.zeros(0) for k, v in traces.items()}
    write_atomically(path, lambda tmp: np.savez(open(tmp, "wb"), manifest=json.dumps(manifest), **arrays))


def load(path, manifest):
    with np.load(path) as data:
        saved = json.loads(str(data["manifest"]))
        if saved != manifest:
            changed = sorted(k for k in manifest if saved.get(k) != manifest[k])
            raise JaxmatInputError(f"{path} holds a run with other {', '.join(changed)}: use another output folder")
        state = {k[len("state_"):]: jnp.asarray(data[k]) for k in data.files if k.startswith("state_")}
        traces = {k: [data[f"trace_{k}"]] if data[f"trace_{k}"].size else [] for k in TRACE_KEYS}
    return state, traces


def observer(structures, lay, n_temps):
    """observe(labels) -> Warren-Cowley alpha (R, L, L) of every replica of the layout :func:`jaxmat.heo.swap.layout`, over
    the first cation shell of the input geometry (:mod:`jaxmat.heo.sro`)."""
    n_rep = lay["n_replicas"]
    copies = [structures[r // n_temps] for r in range(n_rep)]
    starts = np.concatenate([[0], np.cumsum([len(a) for a in copies])])
    sites = [lay["sites"][r, : lay["n_sites"][r]] - starts[r] for r in range(n_rep)]
    pair_i, pair_j = sro.shell_pairs(copies, starts[:-1], sites)
    pairs = tuple(jnp.asarray(a) for a in (pair_i, pair_j, lay["graph"]["system_index"][pair_i]))
    cation_labels = np.flatnonzero(~np.isin(lay["elements"], list(swap.ANIONS)))
    return lambda labels: sro.warren_cowley(labels, *pairs, cation_labels, n_rep + 1)[:-1]


def exists(path) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def collect(structures, lay, state, traces, temperatures, n_temps) -> AnnealResult:
    """The AnnealResult of a sampler state (:func:`jaxmat.heo.swap.init`) and its traces (lists of per-sweep chunks)."""
    elements, n_rep = lay["elements"], lay["n_replicas"]
    starts = np.concatenate([[0], np.cumsum([len(structures[r // n_temps]) for r in range(n_rep)])])
    labels, best_labels = np.asarray(state["labels"]), np.asarray(state["best_labels"])
    attempted = np.maximum(np.asarray(state["attempted"]), 1)

    def frames(chosen):
        out = []
        for r in range(n_rep):
            atoms = structures[r // n_temps].copy()
            atoms.calc = None
            atoms.numbers = elements[chosen[starts[r]: starts[r + 1]]]
            out.append(atoms)
        return out

    from ase.data import chemical_symbols

    stack = lambda k: np.concatenate(traces[k]) if traces[k] else np.zeros((0, n_rep))
    return AnnealResult(input_index=np.arange(n_rep) // n_temps, temperature=np.tile(np.asarray(temperatures, float), len(structures)),
                        energy=np.asarray(state["energy"], float), best_energy=np.asarray(state["best_energy"], float),
                        acceptance=np.asarray(state["accepted"]) / attempted, exchanges=np.asarray(state["exchanged"]),
                        last=frames(labels), best=frames(best_labels),
                        trace_energy=stack("energy"), trace_acceptance=stack("acceptance"), alpha=stack("observed"),
                        cations=[chemical_symbols[z] for z in elements if z not in swap.ANIONS])


def start(checkpoint, manifest: dict, evaluate, params, lay: dict, seed: int):
    """(state, traces, keys, resumed): the run's state and traces from its checkpoint where one exists (it must match
    the manifest), else fresh - one PRNG key per replica folded from ``seed``, the start's energies evaluated (keys
    None when resumed)."""
    if checkpoint is not None and exists(checkpoint):
        state, traces = load(checkpoint, manifest)
        log.info("resuming from %s after %d sweeps", checkpoint, int(state["sweep"]))
        return state, traces, None, True
    keys = replica_keys(seed, lay["n_replicas"])
    graph = {k: jnp.asarray(v) for k, v in lay["graph"].items()}
    state = swap.init(evaluate, params, graph, jnp.asarray(lay["labels"]), keys)
    return state, {k: [] for k in TRACE_KEYS}, keys, False


def replica_keys(seed: int, n_replicas: int):
    """One PRNG key per replica, folded from ``seed``."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.PRNGKey(seed), r))(jnp.arange(n_replicas))


def place_geometry(result: AnnealResult, state: dict) -> AnnealResult:
    """The result's last and lowest-energy frames moved to the state's positions (Å) and cells (Å) of samplers whose
    atoms move (hybrid MC/MD, relaxed swaps)."""
    starts = np.concatenate([[0], np.cumsum([len(a) for a in result.last])])
    geometry = {key: np.asarray(state[key], float) for key in ("positions", "cells", "best_positions", "best_cells")}
    for r in range(len(result.last)):
        rows = slice(starts[r], starts[r + 1])
        result.last[r].cell, result.last[r].positions = geometry["cells"][r], geometry["positions"][rows]
        result.best[r].cell, result.best[r].positions = geometry["best_cells"][r], geometry["best_positions"][rows]
    return result
