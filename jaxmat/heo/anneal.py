"""HEO cation arrangements at temperature: batched swap Monte Carlo with short-range order out.

    python -m jaxmat.heo.anneal CELLS --model M --temperatures 300,900,1500 --sweeps N --out DIR
        [--seed 0] [--checkpoint-every 10] [--exchange] [--dtype float32|float64|mixed] [--head NAME]

Every input cell at every temperature (K) is a replica; all replicas run as one compiled batch
(:mod:`jaxmat.heo.swap`: unrelaxed energies, swaps of two cations of different species, Metropolis at each
replica's kT, compositions conserved exactly). MODEL is any force field with a ``device_model()`` (a MACE
model file or foundation key run by the JAX MACE, ``lj``/``morse`` for quick checks: these pair potentials
do not see species, so every swap is accepted). Outputs in DIR:

- final.extxyz: per replica its last and its lowest-energy arrangement (info: replica, input_index,
  temperature K, state last|lowest, energy eV, acceptance = accepted / attempted swaps, sweeps, exchanges);
- trace.csv: per sweep and replica the energy (eV) after it and that sweep's acceptance ratio;
- sro.json: Warren-Cowley alpha of every cation pair in the first cation shell (:mod:`jaxmat.heo.sro`) per
  temperature, mean and spread (standard deviation) over the replicas, of the last arrangements and of
  the sweep average over the second half of the run;
- energy.png (energy per atom vs sweep), sro.png (alpha vs temperature).

--exchange adds replica exchange (parallel tempering) between neighbouring temperatures of each cell after every
sweep, alternating even and odd pairs.

DIR/checkpoint.npz holds the whole sampler state (arrangements, energies, counters, every replica's PRNG
key) and the traces, written whole every --checkpoint-every sweeps: a killed command run again continues
from it with the same numbers as an uninterrupted run (a run with other inputs or settings is refused;
more --sweeps continue a finished run).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat import cli
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


def _manifest(structures, temperatures, seed, attempts, chunk, model_id, exchange) -> dict:
    from jaxmat.fingerprint import fingerprint

    return {"structures": fingerprint(structures), "temperatures": [float(t) for t in temperatures], "seed": int(seed),
            "attempts": int(attempts), "checkpoint_every": int(chunk), "model": str(model_id), "exchange": bool(exchange)}


def _save(path, state, traces, manifest) -> None:
    from jaxmat.files import write_atomically

    arrays = {f"state_{k}": np.asarray(state[k]) for k in STATE_KEYS}
    arrays |= {f"trace_{k}": np.concatenate(v) if v else np.zeros(0) for k, v in traces.items()}
    write_atomically(path, lambda tmp: np.savez(open(tmp, "wb"), manifest=json.dumps(manifest), **arrays))


def _load(path, manifest):
    with np.load(path) as data:
        saved = json.loads(str(data["manifest"]))
        if saved != manifest:
            changed = sorted(k for k in manifest if saved.get(k) != manifest[k])
            raise JaxmatInputError(f"{path} holds a run with other {', '.join(changed)}: use another output folder")
        state = {k: jnp.asarray(data[f"state_{k}"]) for k in STATE_KEYS}
        traces = {k: [data[f"trace_{k}"]] if data[f"trace_{k}"].size else [] for k in TRACE_KEYS}
    return state, traces


def anneal(structures, force_field, temperatures, sweeps: int, *, seed: int = 0, checkpoint=None, checkpoint_every: int = 10,
           model_id: str = "", on_checkpoint=None, exchange: bool = False) -> AnnealResult:
    """Swap Monte Carlo of every structure at every temperature (K) for ``sweeps`` sweeps (N_c attempts each), unrelaxed
    energies of ``force_field``'s device model. checkpoint: an .npz path to save the state to every checkpoint_every
    sweeps and resume from (model_id: the model's name, part of what the checkpoint must match); on_checkpoint(sweep):
    called after each save. exchange: replica exchange between neighbouring temperatures (in the given order) of each
    structure after every sweep (:func:`jaxmat.heo.swap.exchange`)."""
    check_inputs(structures, force_field, temperatures)
    params, evaluate = force_field.device_model()
    cutoff = float(getattr(force_field, "r_max", None) or force_field.cutoff)
    lay = swap.layout(structures, temperatures, force_field.device_species, cutoff)
    n_rep, n_temps = lay["n_replicas"], len(temperatures)
    graph = {k: jnp.asarray(v) for k, v in lay["graph"].items()}
    copies = [structures[r // n_temps] for r in range(n_rep)]
    starts = np.concatenate([[0], np.cumsum([len(a) for a in copies])])
    sites = [lay["sites"][r, : lay["n_sites"][r]] - starts[r] for r in range(n_rep)]
    pair_i, pair_j = sro.shell_pairs(copies, starts[:-1], sites)
    pair_system = lay["graph"]["system_index"][pair_i]
    cation_labels = np.flatnonzero(~np.isin(lay["elements"], list(swap.ANIONS)))
    pairs = tuple(jnp.asarray(a) for a in (pair_i, pair_j, pair_system))

    def observe(labels):
        return sro.warren_cowley(labels, *pairs, cation_labels, n_rep + 1)[:-1]

    attempts = int(lay["sites"].shape[1])
    manifest = _manifest(structures, temperatures, seed, attempts, checkpoint_every, model_id, exchange)
    exchange_pairs = tuple(jnp.asarray(a) for a in swap.partners(len(structures), n_temps, [len(a) for a in structures])) if exchange else None
    traces = {k: [] for k in TRACE_KEYS}
    if checkpoint is not None and _exists(checkpoint):
        state, traces = _load(checkpoint, manifest)
        log.info("resuming from %s after %d sweeps", checkpoint, int(state["sweep"]))
    else:
        keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.PRNGKey(seed), r))(jnp.arange(n_rep))
        state = swap.init(evaluate, params, graph, jnp.asarray(lay["labels"]), keys)
    arrays = (jnp.asarray(lay["sites"]), jnp.asarray(lay["n_sites"]), jnp.asarray(lay["kT"]))
    while int(state["sweep"]) < sweeps:
        done = int(state["sweep"])
        n = min(checkpoint_every - done % checkpoint_every, sweeps - done)
        state, trace = swap.sweeps(evaluate, params, graph, *arrays, state, n_sweeps=n, attempts=attempts, observe=observe,
                                   pairs=exchange_pairs)
        for k in TRACE_KEYS:
            traces[k].append(np.asarray(trace[k]))
        log.info("sweep %d/%d: mean acceptance %.3f", done + n, sweeps, float(np.mean(trace["acceptance"])))
        if checkpoint is not None:
            _save(checkpoint, state, traces, manifest)
            if on_checkpoint is not None:
                on_checkpoint(done + n)
    return collect(structures, lay, state, traces, temperatures, n_temps)


def _exists(path) -> bool:
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


def sro_table(result: AnnealResult) -> dict:
    """Warren-Cowley alpha per cation pair 'A-B' (A <= B in the model's order) per temperature: mean and spread
    (standard deviation) over the replicas of the last arrangements ('last') and of the per-replica sweep average
    over the second half of the run ('second_half')."""
    import warnings

    temperatures = sorted(set(result.temperature.tolist()))
    half = result.alpha[len(result.alpha) // 2:] if len(result.alpha) else result.alpha
    table = {}
    for a, name_a in enumerate(result.cations):
        for b in range(a, len(result.cations)):
            entry = {}
            for t in temperatures:
                chosen = result.temperature == t
                last = result.alpha[-1, chosen, a, b] if len(result.alpha) else np.full(chosen.sum(), np.nan)
                with warnings.catch_warnings():  # NaN where a pair's species are absent from every replica
                    warnings.simplefilter("ignore", RuntimeWarning)
                    averaged = np.nanmean(half[:, chosen, a, b], axis=0) if len(half) else last
                    entry[f"{t:g}"] = {"last": {"mean": _number(np.nanmean(last)), "spread": _number(np.nanstd(last))},
                                       "second_half": {"mean": _number(np.nanmean(averaged)), "spread": _number(np.nanstd(averaged))},
                                       "replicas": int(chosen.sum())}
            table[f"{name_a}-{result.cations[b]}"] = entry
    return table


def _number(x) -> float | None:
    """A float for JSON; None for NaN (a pair whose species are absent)."""
    return float(x) if np.isfinite(x) else None


def write_outputs(result: AnnealResult, out) -> None:
    """final.extxyz, trace.csv, sro.json, energy.png and sro.png in the folder ``out`` (each written whole)."""
    from pathlib import Path

    from jaxmat.files import write_atomically, write_frames, write_json

    out = Path(out)
    frames = []
    for r in range(len(result.last)):
        for kind, atoms, energy in (("last", result.last[r], result.energy[r]), ("lowest", result.best[r], result.best_energy[r])):
            atoms = atoms.copy()
            atoms.info.update(replica=r, input_index=int(result.input_index[r]), temperature=float(result.temperature[r]),
                              state=kind, energy=float(energy), acceptance=float(result.acceptance[r]),
                              sweeps=len(result.trace_energy), exchanges=int(result.exchanges[r]))
            frames.append(atoms)
    write_frames(out / "final.extxyz", frames)
    lines = ["sweep,replica,input_index,temperature,energy,acceptance"]
    for s in range(len(result.trace_energy)):
        lines += [f"{s + 1},{r},{result.input_index[r]},{result.temperature[r]:g},{result.trace_energy[s, r]:.8f},"
                  f"{result.trace_acceptance[s, r]:.6f}" for r in range(len(result.last))]
    write_atomically(out / "trace.csv", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_json(out / "sro.json", {"definition": "alpha_ab = 1 - p_ab / c_b, first cation shell; 0: random solution",
                                  "cations": result.cations, "alpha": sro_table(result)})
    _plots(result, out)


def _plots(result: AnnealResult, out) -> None:
    from jaxmat.files import write_atomically
    from jaxmat.plotting import pyplot

    plt = pyplot()
    n_atoms = np.array([len(a) for a in result.last], float)
    figure, axis = plt.subplots(figsize=(6, 4))
    sweep = np.arange(1, len(result.trace_energy) + 1)
    colors = {t: plt.cm.coolwarm(k / max(len(set(result.temperature)) - 1, 1)) for k, t in enumerate(sorted(set(result.temperature)))}
    for r in range(len(result.last)):
        axis.plot(sweep, result.trace_energy[:, r] / n_atoms[r], color=colors[result.temperature[r]], lw=0.8,
                  label=f"{result.temperature[r]:g} K" if r < len(colors) else None)
    axis.set(xlabel="sweep", ylabel="energy (eV/atom)")
    axis.legend(fontsize=8)
    write_atomically(out / "energy.png", lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 4))
    temperatures = sorted(colors)
    for pair, entry in sro_table(result).items():
        means = [entry[f"{t:g}"]["second_half"]["mean"] for t in temperatures]
        spreads = [entry[f"{t:g}"]["second_half"]["spread"] for t in temperatures]
        means, spreads = (np.array([np.nan if v is None else v for v in x]) for x in (means, spreads))
        axis.errorbar(temperatures, means, yerr=spreads, marker="o", capsize=3, label=pair)
    axis.axhline(0.0, color="k", lw=0.5)
    axis.set(xlabel="temperature (K)", ylabel="Warren-Cowley alpha (first cation shell)")
    axis.legend(fontsize=6, ncol=3)
    write_atomically(out / "sro.png", lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)


def _temperatures(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise JaxmatInputError(f"--temperatures {text!r}: kelvins separated by commas") from None
    if not values or any(not np.isfinite(t) or t <= 0 for t in values):
        raise JaxmatInputError(f"--temperatures {text!r}: every temperature must be > 0 K")
    return values


@cli.command
def main(argv=None) -> int:
    from pathlib import Path

    from jaxmat.data.sources import read_atoms
    from jaxmat.forcefields.registry import load_force_field
    from jaxmat.precision import use_float64

    parser = cli.parser("python -m jaxmat.heo.anneal", __doc__)
    parser.add_argument("cells", help="structures (extxyz or any format ase.io.read knows), e.g. from jaxmat.heo.generate")
    parser.add_argument("--model", required=True, help="MACE model file, converted directory or foundation key; lj / morse")
    parser.add_argument("--head", help="head of a multi-head MACE model")
    parser.add_argument("--temperatures", required=True, help="kelvins, comma separated (e.g. 300,900,1500)")
    parser.add_argument("--sweeps", type=int, required=True, help="sweeps (N_c swap attempts per replica each)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=10, help="sweeps between checkpoints")
    parser.add_argument("--exchange", action="store_true", help="replica exchange between neighbouring temperatures")
    parser.add_argument("--dtype", choices=["float64", "float32", "mixed"], default="float64", help="precision of the model")
    args = parser.parse_args(argv)
    cli.configure_logging()
    temperatures = _temperatures(args.temperatures)
    if args.sweeps < 0 or args.checkpoint_every < 1:
        raise JaxmatInputError("--sweeps must be >= 0 and --checkpoint-every >= 1")
    use_float64(args.dtype != "float32")
    structures = read_atoms(args.cells)
    force_field = load_force_field(args.model, "jax", args.dtype, head=args.head)
    out = Path(args.out)
    result = anneal(structures, force_field, temperatures, args.sweeps, seed=args.seed, checkpoint=out / "checkpoint.npz",
                    checkpoint_every=args.checkpoint_every, model_id=f"{args.model}|{args.head}|{args.dtype}", exchange=args.exchange)
    write_outputs(result, out)
    print(f"annealed {len(structures)} structure(s) x {len(temperatures)} temperature(s), {args.sweeps} sweeps: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
