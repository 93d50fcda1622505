"""HEO cation arrangements at temperature: batched swap Monte Carlo with short-range order out.

    python -m jaxmat.heo.anneal CELLS --model M --temperatures 300,900,1500 --sweeps N --out DIR
        [--seed 0] [--checkpoint-every 10] [--exchange | --md-steps K [--timestep 2] [--friction 0.01] [--pressure GPa] | --relax-steps K [--relax-cell]]
        [--dtype float32|float64|mixed] [--head NAME]

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
sweep, alternating even and odd pairs. --md-steps K runs K Langevin NVT steps (--timestep fs, --friction 1/fs) of every
replica after every sweep (:mod:`jaxmat.heo.hybrid`: atoms move, final.extxyz carries their positions; the trace
energy is the one after the MD); its checkpoint adds positions, cells, velocities and the MD PRNG keys. --pressure P
adds constant pressure (GPa) to the MD (ASE's NPTBerendsen isotropic cell scaling, --taup fs, --compressibility 1/GPa). --relax-steps K scores
every swap by its energy after at most K FIRE steps (fmax 0.05 eV/Å) from the current geometry, --relax-cell with the
cell (:mod:`jaxmat.heo.relaxed`, jaxmat.relax's batched runner).

DIR/checkpoint.npz holds the whole sampler state (arrangements, energies, counters, every replica's PRNG
key) and the traces, written whole every --checkpoint-every sweeps: a killed command run again continues
from it with the same numbers as an uninterrupted run (a run with other inputs or settings is refused;
more --sweeps continue a finished run).
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from jaxmat import cli
from jaxmat.errors import JaxmatInputError
from jaxmat.forcefields.base import cutoff_of
from jaxmat.heo import sampling, swap
from jaxmat.heo.sampling import AnnealResult, check_inputs, collect  # noqa: F401  (the library call's names)

log = logging.getLogger(__name__)


def anneal(structures, force_field, temperatures, sweeps: int, *, seed: int = 0, checkpoint=None, checkpoint_every: int = 10,
           model_id: str = "", on_checkpoint=None, exchange: bool = False) -> AnnealResult:
    """Swap Monte Carlo of every structure at every temperature (K) for ``sweeps`` sweeps (N_c attempts each), unrelaxed
    energies of ``force_field``'s device model. checkpoint: an .npz path to save the state to every checkpoint_every
    sweeps and resume from (model_id: the model's name, part of what the checkpoint must match); on_checkpoint(sweep):
    called after each save. exchange: replica exchange between neighbouring temperatures (in the given order) of each
    structure after every sweep (:func:`jaxmat.heo.swap.exchange`)."""
    check_inputs(structures, force_field, temperatures)
    params, evaluate = force_field.device_model()
    cutoff = cutoff_of(force_field)
    lay = swap.layout(structures, temperatures, force_field.device_species, cutoff)
    n_temps = len(temperatures)
    graph = {k: jnp.asarray(v) for k, v in lay["graph"].items()}
    observe = sampling.observer(structures, lay, n_temps)
    attempts = int(lay["sites"].shape[1])
    manifest = sampling.manifest(structures, temperatures, seed, attempts, checkpoint_every, model_id, exchange)
    exchange_pairs = tuple(jnp.asarray(a) for a in swap.partners(len(structures), n_temps, [len(a) for a in structures])) if exchange else None
    state, traces, _, _ = sampling.start(checkpoint, manifest, evaluate, params, lay, seed)
    arrays = (jnp.asarray(lay["sites"]), jnp.asarray(lay["n_sites"]), jnp.asarray(lay["kT"]))
    while int(state["sweep"]) < sweeps:
        done = int(state["sweep"])
        n = min(checkpoint_every - done % checkpoint_every, sweeps - done)
        state, trace = swap.sweeps(evaluate, params, graph, *arrays, state, n_sweeps=n, attempts=attempts, observe=observe,
                                   pairs=exchange_pairs)
        for k in sampling.TRACE_KEYS:
            traces[k].append(np.asarray(trace[k]))
        log.info("sweep %d/%d: mean acceptance %.3f", done + n, sweeps, float(np.mean(trace["acceptance"])))
        if checkpoint is not None:
            sampling.save(checkpoint, state, traces, manifest)
            if on_checkpoint is not None:
                on_checkpoint(done + n)
    return collect(structures, lay, state, traces, temperatures, n_temps)


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
    from jaxmat.heo.plots import anneal_plots

    anneal_plots(result, sro_table(result), out)


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
    parser.add_argument("--md-steps", type=int, default=0, help="Langevin NVT steps after every sweep (hybrid MC/MD; 0: none)")
    parser.add_argument("--timestep", type=float, default=2.0, help="MD time step (fs)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    parser.add_argument("--skin", type=float, default=1.0, help="MD neighbour-list skin (Å)")
    parser.add_argument("--pressure", type=float, help="MD at constant pressure (GPa; Berendsen, --taup fs, --compressibility 1/GPa)")
    parser.add_argument("--taup", type=float, default=500.0)
    parser.add_argument("--compressibility", type=float, default=0.005)
    parser.add_argument("--relax-steps", type=int, default=0, help="relaxed swaps: energies after at most K FIRE steps (0: unrelaxed)")
    parser.add_argument("--relax-cell", action="store_true", help="relaxed swaps: the cell relaxes too")
    args = parser.parse_args(argv)
    cli.configure_logging()
    temperatures = _temperatures(args.temperatures)
    if args.sweeps < 0 or args.checkpoint_every < 1:
        raise JaxmatInputError("--sweeps must be >= 0 and --checkpoint-every >= 1")
    if args.md_steps < 0 or args.timestep <= 0 or args.friction < 0 or args.skin < 0 or args.taup <= 0 or args.compressibility <= 0:
        raise JaxmatInputError("--md-steps and --friction must be >= 0, --timestep, --taup and --compressibility > 0, --skin >= 0 Å")
    if args.pressure is not None and not args.md_steps:
        raise JaxmatInputError("--pressure is the MD's: give --md-steps too")
    if args.relax_steps < 0 or sum(map(bool, (args.md_steps, args.exchange, args.relax_steps))) > 1:
        raise JaxmatInputError("--exchange, --md-steps and --relax-steps go one at a time (MD and relaxations give every replica its "
                               "own geometry, so arrangements cannot be exchanged); --relax-steps must be >= 0")
    use_float64(args.dtype != "float32")
    structures = read_atoms(args.cells)
    force_field = load_force_field(args.model, "jax", args.dtype, head=args.head)
    out = Path(args.out)
    common = dict(seed=args.seed, checkpoint=out / "checkpoint.npz", checkpoint_every=args.checkpoint_every,
                  model_id=f"{args.model}|{args.head}|{args.dtype}")
    if args.md_steps:
        from jaxmat.heo.hybrid import hybrid

        result = hybrid(structures, force_field, temperatures, args.sweeps, args.md_steps, timestep_fs=args.timestep,
                        friction_per_fs=args.friction, skin=args.skin, pressure_gpa=args.pressure, taup_fs=args.taup,
                        compressibility_per_gpa=args.compressibility, **common)
    elif args.relax_steps:
        from jaxmat.heo.relaxed import relaxed_anneal

        result = relaxed_anneal(structures, force_field, temperatures, args.sweeps, relax_steps=args.relax_steps,
                                relax_cell=args.relax_cell, **common)
    else:
        result = anneal(structures, force_field, temperatures, args.sweeps, exchange=args.exchange, **common)
    write_outputs(result, out)
    print(f"annealed {len(structures)} structure(s) x {len(temperatures)} temperature(s), {args.sweeps} sweeps: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
