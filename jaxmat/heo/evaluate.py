"""Evaluate MACE potentials on high-entropy oxides: pretrained (base) vs finetuned, side by side.

    python -m jaxmat.heo.evaluate --models base.model finetuned.model --data CURATED_DIR \\
        --structures cells.extxyz --out REPORT [--anneal ANNEAL_DIR] [--config configs/heo_eval.yaml] [--set KEY=VALUE]

Three tasks, every relaxation through jaxmat's batched runner (``jaxmat.relax.relax``):
1. test-split errors: energy (meV/atom) and force (meV/Å) RMSE/MAE against the DFT labels;
2. in-distribution: DFT structures of the test split rattled (seeded), relaxed with each model at fixed
   cell; RMSD to the DFT geometry (Å, minimum image, mean displacement removed) and energy differences;
3. random substitution: the given rock-salt supercells (``python -m jaxmat.heo.generate``) relaxed with
   each model (cell too, as in the reference); convergence ratio, steps, final energies, and the energy
   of every final geometry under an independent reference model (CHGNet offline, with the MP2020
   corrections removed so its energies sit on the DFT scale; or a MACE model path or mace-torch foundation
   key such as small-omat-0). The models too may be foundation keys; ``head`` (config) picks a multi-head
   model's head. With --anneal (a python -m jaxmat.heo.anneal folder run on the same structures) the lowest-energy
   annealed arrangement of every replica is relaxed the same way: the report compares its relaxed energy with the
   relaxed random start of the same cell per temperature and shows the anneal's Warren-Cowley alpha table.

Raw outputs (extxyz/JSON under REPORT/test, REPORT/in_distribution, REPORT/substitution) are written
first, each under a temporary name and renamed when complete; a rerun skips the parts already there.
The tables, metrics.json, plots and report.md are then computed from those files alone
(``python -m jaxmat.heo.report REPORT`` recomputes them).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxmat import cli
from jaxmat.config import apply_overrides, load_config
from jaxmat.errors import JaxmatInputError
from jaxmat.files import write_frames, write_json
from jaxmat.forcefields.base import evaluate_frames, missing_element_counts
from jaxmat.heo.config import resolve_evaluation_config


def model_labels(paths) -> list[str]:
    """Short unique names of the models (file stems, numbered when they repeat)."""
    stems = [Path(p).stem if Path(p).suffix else Path(p).name for p in paths]
    return [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]


def _plain(atoms):
    """A copy without the calculator (info and per-atom arrays kept)."""
    copy = atoms.copy()
    copy.calc = None
    return copy


def supported_frames(frames, force_fields: dict, what: str, policy: str):
    """(frames every model supports, {model: {element: frames}} of the elements some model lacks)."""
    from jaxmat.forcefields.base import unsupported_elements

    missing = {label: counts for label, ff in force_fields.items()
               if (counts := missing_element_counts(getattr(ff, "supported_numbers", None), frames))}
    keep = [atoms for atoms in frames if not any(unsupported_elements(ff, atoms.numbers) for ff in force_fields.values())]
    if missing and policy == "error":
        raise JaxmatInputError(f"{what}: model(s) lack elements of the data (model: element: frames) {missing}; "
                               f"set unsupported=skip to leave those frames out")
    if frames and not keep:
        raise JaxmatInputError(f"{what}: every one of the {len(frames)} frames has elements a model lacks (model: element: "
                               f"frames) {missing}: nothing left to evaluate")
    if missing:
        print(f"{what}: leaving out {len(frames) - len(keep)} of {len(frames)} frames with elements a model lacks {missing}",
              file=sys.stderr)
    return keep, missing


def run_test_errors(config, data_dir: Path, force_fields: dict, out: Path, skipped: dict) -> None:
    from jaxmat.heo.finetune import read_split

    frames = read_split(data_dir, config["test"]["split"], "DFT_energy", "DFT_forces")
    if config["test"]["max_frames"]:
        frames = frames[:config["test"]["max_frames"]]
    frames, missing = supported_frames(frames, force_fields, f"{config['test']['split']} split", config["unsupported"])
    skipped["test"] = {"left_out": missing, "kept": len(frames)}
    for label, ff in force_fields.items():
        path = out / "test" / f"{label}.extxyz"
        if path.exists():
            continue
        print(f"test errors: {label} on {len(frames)} frames", file=sys.stderr)
        energies, forces = evaluate_frames(ff, frames, config["test"]["batch_atoms"])
        written = []
        for atoms, energy, force in zip(frames, energies, forces):
            atoms = _plain(atoms)
            atoms.info["pred_energy"] = float(energy)
            atoms.arrays["pred_forces"] = np.asarray(force)
            written.append(atoms)
        write_frames(path, written)


def in_distribution_starts(config, data_dir: Path, force_fields: dict, skipped: dict):
    from jaxmat.heo.finetune import read_split

    section = config["in_distribution"]
    frames = read_split(data_dir, section["split"], "DFT_energy", "DFT_forces")
    frames, missing = supported_frames(frames, force_fields, f"in-distribution ({section['split']} split)", config["unsupported"])
    skipped["in_distribution"] = {"left_out": missing}
    rng = np.random.default_rng(config["seed"])
    chosen = sorted(rng.permutation(len(frames))[:section["count"]].tolist())
    starts = []
    for i in chosen:
        atoms = _plain(frames[i])
        atoms.arrays["dft_positions"] = atoms.positions.copy()
        atoms.positions = atoms.positions + rng.normal(0.0, section["rattle"], atoms.positions.shape)
        starts.append(atoms)
    return starts


def run_relaxations(starts, force_fields: dict, section: dict, out_dir: Path, config: dict, relax_cell: bool) -> None:
    """Relax the starts with every model; OUT_DIR/{model}.extxyz (final frames, carrying the starts' info and
    arrays) and {model}_traces.json. Starts with arrays['dft_positions'] also get the model's energy there."""
    from jaxmat.relax.runner import relax

    for label, ff in force_fields.items():
        path = out_dir / f"{label}.extxyz"
        if path.exists():
            continue
        print(f"{out_dir.name}: relaxing {len(starts)} structures with {label} ({section['optimizer']}, fmax "
              f"{section['fmax']} eV/Å, at most {section['max_steps']} steps)", file=sys.stderr)
        names = [f"{out_dir.name} structure {i}" for i in range(len(starts))]
        results = relax(starts, ff, optimizer=section["optimizer"], fmax=section["fmax"], max_steps=section["max_steps"],
                        max_atoms=config["max_atoms"], keep_trajectory=True, names=names, relax_cell=relax_cell)
        at_dft = None
        if "dft_positions" in starts[0].arrays:
            dft_geometries = []
            for start in starts:
                atoms = _plain(start)
                atoms.positions = start.arrays["dft_positions"]
                dft_geometries.append(atoms)
            at_dft, _ = evaluate_frames(ff, dft_geometries)
        frames, traces = [], []
        for i, result in enumerate(results):
            atoms = _plain(result.atoms)  # the runner's copy of the start: its info and arrays come along
            atoms.info.update(status=result.status, n_steps=int(result.n_steps), model_energy=float(result.energy),
                              fmax=float(result.fmax))
            if result.message:
                atoms.info["message"] = result.message
            if at_dft is not None:
                atoms.info["model_energy_at_dft"] = float(at_dft[i])
            frames.append(atoms)
            traces.append([float(step[1]) for step in result.trajectory])
        write_json(out_dir / f"{label}_traces.json", {"energies_eV": traces, "stats": results.stats})
        write_frames(path, frames)


def add_reference_energies(reference, out_dir: Path, names) -> None:
    """Reference-model energy (eV) in info['reference_energy'] of every structure of OUT_DIR/{name}.extxyz."""
    import ase.io

    for name in names:
        path = out_dir / f"{name}.extxyz"
        frames = ase.io.read(path, index=":", format="extxyz")
        todo = [i for i, a in enumerate(frames) if "reference_energy" not in a.info and a.info.get("status") != "failed"]
        if not todo:
            continue
        print(f"{out_dir.name}: reference energies of {len(todo)} {name} structures", file=sys.stderr)
        energies, _ = evaluate_frames(reference, [frames[i] for i in todo])
        for i, energy in zip(todo, energies):
            frames[i].info["reference_energy"] = float(energy)
        write_frames(path, frames)


def load_reference(spec: str, dtype: str):
    if spec in (None, "none"):
        return None
    from jaxmat.forcefields.registry import load_force_field

    return load_force_field(spec, "torch", dtype)


def annealed_starts(anneal_dir, cells, kept) -> list:
    """The lowest-energy arrangement of every replica in ANNEAL_DIR/final.extxyz (python -m jaxmat.heo.anneal, state
    lowest) whose input cell is among ``kept``, each checked against ``cells`` (the --structures it must have started
    from: composition and cell); info: temperature, anneal_energy (eV, unrelaxed) and substitution_index into kept."""
    import ase.io

    path = Path(anneal_dir) / "final.extxyz"
    if not path.exists():
        raise JaxmatInputError(f"--anneal {anneal_dir}: no final.extxyz there (python -m jaxmat.heo.anneal writes it)")
    position = {id(atoms): k for k, atoms in enumerate(kept)}
    starts = []
    for atoms in ase.io.read(path, index=":"):
        if atoms.info.get("state") != "lowest":
            continue
        k = int(atoms.info.get("input_index", -1))
        if not (0 <= k < len(cells) and sorted(atoms.numbers) == sorted(cells[k].numbers)
                and np.allclose(atoms.cell[:], cells[k].cell[:], atol=1e-6)):
            raise JaxmatInputError(f"--anneal {anneal_dir}: replica {atoms.info.get('replica')} did not start from structure {k} "
                                   f"of --structures (another composition or cell): anneal those structures")
        if id(cells[k]) in position:
            energy = atoms.get_potential_energy()
            start = _plain(atoms)
            start.info = {"temperature": float(atoms.info["temperature"]), "anneal_energy": float(energy),
                          "substitution_index": position[id(cells[k])]}
            starts.append(start)
    if not starts:
        raise JaxmatInputError(f"--anneal {anneal_dir}: no lowest-energy arrangements of the substitution structures in {path}")
    return starts


def evaluate(models, data_dir, structures_path, out, config: dict, anneal_dir=None) -> Path:
    """Run the three tasks (raw outputs in OUT), then write the report; returns OUT/report.md. anneal_dir: a folder of
    python -m jaxmat.heo.anneal run on the structures; its lowest-energy arrangements are relaxed as the substitution
    structures are (OUT/annealed) and its sro.json copied there, for the report's annealed vs random-start table."""
    import ase.io

    from jaxmat.forcefields.registry import load_force_field
    from jaxmat.heo.report import write_report

    config = resolve_evaluation_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir)
    labels = model_labels(models)
    force_fields = {label: load_force_field(str(path), config["backend"], config["dtype"], config["head"])
                    for label, path in zip(labels, models)}
    skipped: dict = {}
    timings = {}
    started = time.perf_counter()
    run_test_errors(config, data_dir, force_fields, out, skipped)
    timings["test_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    starts = in_distribution_starts(config, data_dir, force_fields, skipped)
    start_path = out / "in_distribution" / "start.extxyz"
    if not start_path.exists():
        write_frames(start_path, starts)
    run_relaxations(starts, force_fields, config["in_distribution"], out / "in_distribution", config, relax_cell=False)
    timings["in_distribution_seconds"] = time.perf_counter() - started
    if anneal_dir is not None and not structures_path:
        raise JaxmatInputError("--anneal needs --structures: the structures the anneal started from")

    if structures_path:
        started = time.perf_counter()
        path = Path(structures_path)
        if not path.exists():
            raise JaxmatInputError(f"substitution structures {path} not found (python -m jaxmat.heo.generate writes them)")
        cells = ase.io.read(path, index=":")
        if not cells:
            raise JaxmatInputError(f"{path} holds no structures")
        every = cells
        cells, missing = supported_frames(cells, force_fields, f"substitution structures {path}", config["unsupported"])
        skipped["substitution"] = {"left_out": missing}
        if anneal_dir is not None:
            annealed = annealed_starts(anneal_dir, every, cells)
            if not (out / "annealed" / "start.extxyz").exists():
                write_frames(out / "annealed" / "start.extxyz", annealed)
                write_json(out / "annealed" / "sro.json", json.loads((Path(anneal_dir) / "sro.json").read_text()))
            run_relaxations(annealed, force_fields, config["substitution"], out / "annealed", config,
                            relax_cell=config["substitution"]["relax_cell"])
        if not (out / "substitution" / "start.extxyz").exists():
            write_frames(out / "substitution" / "start.extxyz", [_plain(a) for a in cells])
        run_relaxations(cells, force_fields, config["substitution"], out / "substitution", config,
                        relax_cell=config["substitution"]["relax_cell"])
        reference = load_reference(config["reference"], config["dtype"])
        if reference is not None:
            add_reference_energies(reference, out / "substitution", ["start", *labels])
        timings["substitution_seconds"] = time.perf_counter() - started

    meta_path = out / "evaluation.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({"models": dict(zip(labels, map(str, models))), "data": str(data_dir), "structures": str(structures_path), "anneal": str(anneal_dir),
                 "config": config, "left_out": skipped})
    previous = meta.setdefault("timings", {})
    for key, seconds in timings.items():  # a resumed run adds the time it spent
        previous[key] = previous.get(key, 0.0) + seconds
    write_json(meta_path, meta)
    return write_report(out)


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.heo.evaluate", __doc__)
    parser.add_argument("--models", nargs="+", required=True, help="mace-torch .model files or foundation keys (or converted JAX MACE dirs with backend jax)")
    parser.add_argument("--data", required=True, help="curated folder with train/val/test.extxyz (python -m jaxmat.heo.curate)")
    parser.add_argument("--structures", help="rock-salt supercells for the random-substitution task (python -m jaxmat.heo.generate)")
    parser.add_argument("--anneal", help="an output folder of python -m jaxmat.heo.anneal run on --structures: annealed vs random starts")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--config", help="YAML (configs/heo_eval.yaml); defaults otherwise")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from jaxmat import compile_cache

    compile_cache.enable()  # relaxations rerun with the same shapes compile nothing ($JAXMAT_COMPILATION_CACHE=0: off)
    config = apply_overrides(load_config(args.config) if args.config else {}, args.set)
    report = evaluate(args.models, args.data, args.structures, args.out, config, anneal_dir=args.anneal)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
