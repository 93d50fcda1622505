"""Relax many structures at once.

    python -m jaxmat.relax INPUT.extxyz --model MODEL --out OUT.extxyz [--optimizer fire|lbfgs|lbfgs-linesearch]
        [--fmax 0.05] [--max-steps 300] [--max-atoms N] [--relax-cell] [--trajectory DIR] [--backend torch|jax]
        [--head NAME] [--cell-filter frechet|exp] [--pressure GPA] [--hydrostatic-strain] [--constant-volume]
        [--cell-mask XX,YY,ZZ,YZ,XZ,XY] [--fix-atoms INDICES|tag:T] [--fix-symmetry [SYMPREC]]

MODEL is a mace-torch model file (``--backend torch`` runs it with mace-torch, ``--backend jax`` with
jaxmat's JAX MACE after converting the weights), a directory written by scripts/convert_mace.py
(``--backend jax``, no torch needed), a mace-torch foundation key (``medium-mpa-0``, ``small-omat-0``, ``mh-1``,
...: mace-torch downloads it, or takes it from its cache ``~/.cache/mace``), or a classical potential for quick tests:
``lj[:sigma,epsilon,cutoff]`` / ``morse[:sigma,epsilon,alpha,cutoff]`` (Å, eV).
Finished structures are appended to OUT.partial as they complete; a killed run started again
with the same command skips them. OUT.partial.json records what the results depend on (the input
structures' fingerprint, model, backend, dtype, optimizer, fmax, max-steps, relax-cell); a rerun with a
different input or setting is refused rather than mixing two runs' results. OUT holds every structure in input order, with
info['status'] (converged / max_steps / failed), info['n_steps'], energy (eV) and forces (eV/Å).
``--max-steps 0`` only evaluates energies and forces.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from jaxmat import cli
from jaxmat.fingerprint import fingerprint


def _frame(result, index: int):
    atoms = result.atoms
    atoms.info.update({"status": result.status, "n_steps": int(result.n_steps), "input_index": int(index)})
    if result.message:
        atoms.info["message"] = result.message
    if result.status == "failed" and not np.isfinite(result.energy):
        atoms.calc = None
    return atoms


MANIFEST_VERSION = 1
SETTINGS = ("model", "head", "backend", "dtype", "optimizer", "fmax", "max_steps", "relax_cell", "cell_filter", "pressure",
            "hydrostatic_strain", "constant_volume", "cell_mask", "fix_atoms", "fix_symmetry")  # change the results
LATER_SETTINGS = {"cell_filter": "frechet", "pressure": 0.0, "hydrostatic_strain": False, "constant_volume": False,
                  "cell_mask": None, "fix_atoms": None, "fix_symmetry": None}
"""settings newer than some manifests: a manifest without one was written with this value"""


def manifest_path(out) -> Path:
    """OUT.partial.json: what the results in OUT.partial* depend on (shared by every process's log)."""
    out = Path(out)
    return out.with_name(out.name + ".partial.json")


def run_manifest(args, structures) -> dict:
    return {"version": MANIFEST_VERSION, "input": str(args.input), "n_structures": len(structures),
            "structures": fingerprint(structures), **{k: getattr(args, k) for k in SETTINGS}}


def check_resumable(out, manifest: dict) -> None:
    """Refuse (JaxmatInputError) when partial logs of OUT exist but were written by another run: different
    input structures or settings, or no OUT.partial.json (an older jaxmat). Without logs, record ``manifest``."""
    from jaxmat import distributed
    from jaxmat.errors import JaxmatInputError
    from jaxmat.files import write_json
    from jaxmat.relax import shards

    path = manifest_path(out)
    logs = [p for p in shards.partial_logs(out) if p.stat().st_size]
    if not logs:  # a fresh run (a manifest left without logs is stale: nothing to mix)
        if distributed.process_index() == 0:
            write_json(path, manifest)
        return
    names = ", ".join(str(p) for p in logs)
    advice = f"delete {names} (and {path.name}) or choose another --out"
    if not path.exists():
        raise JaxmatInputError(f"cannot resume from {names}: it has no {path.name} saying which input and settings "
                               f"produced it (an older jaxmat, or a different run); {advice}")
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    differs = []
    if (recorded.get("structures"), recorded.get("n_structures")) != (manifest["structures"], manifest["n_structures"]):
        differs.append(f"input structures differ ({manifest['input']}: {manifest['n_structures']} structures, "
                       f"partial file from {recorded.get('input')}: {recorded.get('n_structures')} structures)")
    differs += [f"--{k.replace('_', '-')} {manifest[k]} (partial file: {recorded.get(k)})"
                for k in SETTINGS if recorded.get(k, LATER_SETTINGS.get(k)) != manifest[k]]
    if differs:
        raise JaxmatInputError(f"cannot resume from {names}: it was written by a different run: "
                               f"{'; '.join(differs)}; {advice}")


def _check_indices(done: dict, n_structures: int, out, source) -> None:
    """Refuse results for structures the input does not have (e.g. 9 done of 5)."""
    from jaxmat.errors import JaxmatInputError

    extra = sorted(i for i in done if not 0 <= i < n_structures)
    if extra:
        raise JaxmatInputError(f"cannot resume from {out}.partial*: it holds results for structures {extra[:10]} but "
                               f"{source} has {n_structures}; delete {out}.partial* or choose another --out")


def build_parser():
    """The command's arguments (also what a hand-made OUT.partial.json is computed from, in tests)."""
    from jaxmat.forcefields.registry import BACKENDS
    from jaxmat.relax.optimizers import OPTIMIZERS

    parser = cli.parser("python -m jaxmat.relax", __doc__)
    parser.add_argument("input", help="structures (any format ase.io.read knows, e.g. extxyz), or embedded:heo")
    parser.add_argument("--model", required=True, help="mace-torch model file or foundation key (medium-mpa-0, ...), "
                        "converted JAX MACE directory, or lj[:sigma,eps,cutoff] / morse[:...]")
    parser.add_argument("--head", help="head of a multi-head MACE model (default: the only one, else 'default')")
    parser.add_argument("--out", required=True, help="output extxyz")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="fire")
    parser.add_argument("--fmax", type=float, default=0.05, help="force convergence threshold, eV/Å")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--max-atoms", type=int, default=None, help="atom budget of one batch")
    parser.add_argument("--relax-cell", action="store_true", help="relax the cell too (an ASE cell filter per structure, --cell-filter)")
    cell = parser.add_argument_group("cell relaxation (with --relax-cell; as ASE's filters)")
    cell.add_argument("--cell-filter", choices=["frechet", "exp"], default="frechet",
                      help="frechet: ASE's FrechetCellFilter; exp: ASE's ExpCellFilter (the reference HEO study's)")
    cell.add_argument("--pressure", type=float, default=0.0, help="external pressure, GPa (minimises E + pV)")
    cell.add_argument("--hydrostatic-strain", action="store_true", help="only hydrostatic cell deformation")
    cell.add_argument("--constant-volume", action="store_true", help="cell shape relaxes, volume (approximately) kept")
    cell.add_argument("--cell-mask", help="strain components that relax, six 0/1 flags xx,yy,zz,yz,xz,xy (e.g. 1,1,1,0,0,0)")
    parser.add_argument("--fix-atoms", help="ASE FixAtoms on every structure: atom indices (0,3,7 or 0-11) or tag:T "
                        "(atoms with that tag); constraints stored with the structures apply anyway")
    parser.add_argument("--fix-symmetry", nargs="?", type=float, const=0.01, metavar="SYMPREC",
                        help="ASE FixSymmetry on every structure: keep the space group found by spglib within SYMPREC "
                        "(Å, default 0.01; the structure is first symmetrised to it, as ASE does)")
    parser.add_argument("--trajectory", help="folder for one extxyz trajectory per structure")
    parser.add_argument("--backend", choices=list(BACKENDS), default="torch", help="MACE implementation")
    parser.add_argument("--dtype", choices=["float64", "float32", "mixed"], default="float64",
                        help="MACE precision; mixed (--backend jax only): float32 model, float64 positions and sums")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--per-device", action="store_true",
                        help="each local device relaxes its own share of the structures (JAX force fields)")
    from jaxmat import distributed

    distributed.add_arguments(parser)
    return parser


@cli.command
def main(argv=None) -> int:
    from jaxmat import distributed

    args = build_parser().parse_args(argv)
    cli.configure_logging(logging.WARNING)
    distributed.initialize_from_args(args, join_devices=False)  # each process relaxes its share on its own devices
    distributed.check_same("arguments", {k: v for k, v in vars(args).items() if k != "process_id"}, args.distributed_timeout)

    from jaxmat import compile_cache
    from jaxmat.data.sources import read_atoms
    from jaxmat.files import append_frame, write_frames
    from jaxmat.forcefields.registry import load_force_field
    from jaxmat.precision import use_float64
    from jaxmat.relax import shards
    from jaxmat.relax.runner import relax

    use_float64(args.dtype != "float32")  # mixed: positions, optimizer and sums in float64
    compile_cache.enable()  # a rerun with the same shapes compiles nothing ($JAXMAT_COMPILATION_CACHE=0: off)
    structures = read_atoms(args.input)
    cell_filter = cell_options(args, structures)
    force_field = load_force_field(args.model, args.backend, args.dtype, head=args.head)
    out = Path(args.out)
    partial = shards.partial_path(out)  # OUT.partial, or OUT.partial.<process> with several
    check_resumable(out, run_manifest(args, structures))  # never mixes two runs' results
    done = shards.frames_by_index(partial) if partial.exists() else {}
    _check_indices(done, len(structures), out, args.input)  # before "resuming: 9 of 5" could be printed
    if partial.exists():
        print(f"resuming: {len(done)} of {len(structures)} structures already done in {partial}", file=sys.stderr)
    done.update(shards.done_elsewhere(out, partial, args.distributed_timeout))  # other processes' / earlier runs' logs
    _check_indices(done, len(structures), out, args.input)
    todo = [i for i in shards.share(len(structures)) if i not in done]
    resumed = len(done)
    traj_dir = Path(args.trajectory) if args.trajectory else None
    if traj_dir:
        traj_dir.mkdir(parents=True, exist_ok=True)

    def on_result(result):
        index = todo[result.index]
        frame = _frame(result, index)
        if traj_dir and result.trajectory:  # before the frame: a structure in OUT.partial has its trajectory
            write_frames(traj_dir / f"{index:05d}.extxyz", _trajectory_images(frame, result.trajectory))
        append_frame(partial, frame)  # one write: a kill leaves whole frames, or a tail the rerun drops
        done[index] = frame

    names = [f"structure {i} of {args.input}" for i in todo]
    if todo:  # (a process whose share is all done has nothing to relax)
        run = shards.on_local_devices(relax) if args.per_device else relax
        run([structures[i] for i in todo], force_field, optimizer=args.optimizer, fmax=args.fmax, max_steps=args.max_steps,
            max_atoms=args.max_atoms, progress=not args.no_progress, on_result=on_result,
            keep_trajectory=traj_dir is not None, names=names, relax_cell=args.relax_cell, cell_filter=cell_filter)
    if not shards.finish(out, partial, done, len(structures)):  # several processes: the first writes OUT
        return 0
    manifest_path(out).unlink(missing_ok=True)
    statuses = [done[i].info["status"] for i in range(len(structures))]
    counts = {s: statuses.count(s) for s in ("converged", "max_steps", "failed")}
    print(f"wrote {len(statuses)} structures to {out}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f" ({len(done) - resumed} relaxed in this run, {resumed} taken from {partial.name})")
    return 0


def cell_options(args, structures):
    """The run's CellFilter (None without --relax-cell); --fix-atoms and --fix-symmetry added to each structure's
    constraints (FixSymmetry with another constraint is refused for that structure)."""
    from jaxmat.errors import ConfigError
    from jaxmat.relax.cell import CellFilter

    if args.fix_symmetry is not None:
        if not args.fix_symmetry > 0:
            raise ConfigError(f"--fix-symmetry needs a positive tolerance in Å, not {args.fix_symmetry}")
        from ase.constraints import FixSymmetry

        for k, atoms in enumerate(structures):
            if not atoms.pbc.all():
                raise ConfigError(f"--fix-symmetry needs periodic structures; structure {k} is not")
            atoms.set_constraint(list(atoms.constraints) + [FixSymmetry(atoms, symprec=args.fix_symmetry)])
    if args.fix_atoms:
        for k, atoms in enumerate(structures):
            atoms.set_constraint(list(atoms.constraints) + [fixed_atoms(args.fix_atoms, atoms, k)])
    options = dict(pressure=args.pressure, hydrostatic_strain=args.hydrostatic_strain, constant_volume=args.constant_volume,
                   mask=None if args.cell_mask is None else cell_mask(args.cell_mask))
    if not args.relax_cell:
        given = [k for k, v in options.items() if v] + (["cell_filter"] if args.cell_filter != "frechet" else [])
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --relax-cell")
        return None
    return CellFilter(args.cell_filter, **options)


def cell_mask(text: str) -> tuple:
    from jaxmat.errors import ConfigError

    flags = [f.strip() for f in text.split(",")]
    if len(flags) != 6 or any(f not in ("0", "1") for f in flags):
        raise ConfigError(f"--cell-mask needs six 0/1 flags xx,yy,zz,yz,xz,xy, not {text!r}")
    return tuple(f == "1" for f in flags)


def fixed_atoms(spec: str, atoms, k: int):
    """ASE FixAtoms from --fix-atoms: indices (0,3,7 or 0-11) or tag:T, checked against structure k."""
    from ase.constraints import FixAtoms

    from jaxmat.errors import ConfigError

    if spec.startswith("tag:"):
        try:
            tag = int(spec[4:])
        except ValueError:
            raise ConfigError(f"--fix-atoms tag:T needs a whole number T, not {spec!r}") from None
        return FixAtoms(mask=atoms.get_tags() == tag)
    indices = []
    try:
        for part in spec.split(","):
            first, _, last = part.partition("-")
            indices += list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ConfigError(f"--fix-atoms takes indices like 0,3,7 or 0-11, or tag:T, not {spec!r}") from None
    if any(not 0 <= i < len(atoms) for i in indices):
        raise ConfigError(f"--fix-atoms {spec}: structure {k} has {len(atoms)} atoms")
    return FixAtoms(indices=indices)


def _trajectory_images(frame, trajectory) -> list:
    """ase.Atoms per recorded step (positions Å, energy eV, forces eV/Å, cell Å) with single-point results."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for positions, energy, forces, cell in trajectory:
        image = Atoms(numbers=frame.numbers, positions=positions, cell=cell, pbc=frame.pbc)
        image.calc = SinglePointCalculator(image, energy=energy, forces=forces)
        images.append(image)
    return images


if __name__ == "__main__":
    sys.exit(main())
