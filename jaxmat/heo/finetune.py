"""Finetune a MACE potential on curated HEO DFT frames with mace-torch's ``mace_run_train``.

    python -m jaxmat.heo.finetune --config configs/heo_finetune.yaml [--set finetune.max_num_epochs=5]

``foundation.model`` picks the starting point:
- ``small`` / ``medium`` / ``large``: MACE-MP-0 by name (mace-torch downloads it; needs the network);
- a path to a mace-torch ``.model`` file (e.g. a downloaded MACE-MP-0 or MACE-OMAT);
- ``base``: the offline analogue of the reference's experiment. A small MACE is first trained on frames
  labelled by CHGNet (whose weights ship in its wheel; MP2020 corrections removed, so raw PBE/PBE+U
  energies as in MACE-MP-0's training data): rattled copies of curated train/validation structures,
  chosen so that every element of the finetuning data is covered, plus rattled rock-salt
  Mg-Co-Ni-Cu-Zn oxide cells. Like MACE-MP-0, it knows the chemistry from another model of the same
  level of theory and has never seen the LeMat-Bulk DFT labels; test structures are not used.

The finetuning stage uses the reference's settings: DFT_energy / DFT_forces, float64, energy weight 1,
forces weight 10, lr 1e-4, batch 5, ``E0s: foundation``, ``rms_forces_scaling``, all elements of the
foundation model kept. OUT gets base.model (for ``base``), finetuned.model, each stage's
mace_config.yaml and train.log, loss-curve PNGs and summary.json. Every stage is resumable: rerun the
same command and finished stages are skipped, an interrupted mace_run_train restarts from its last
checkpoint (``restart_latest``). Models are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from jaxmat import cli
from jaxmat.config import apply_overrides, load_config
from jaxmat.errors import JaxmatInputError
from jaxmat.files import copy_file, write_atomically, write_frames, write_json
from jaxmat.forcefields.base import missing_element_counts
from jaxmat.heo.config import MACE_MP_NAMES, resolve_finetune_config


def read_split(data_dir, name: str, energy_key: str, forces_key: str):
    """Frames of DIR/NAME.extxyz; every frame must carry the energy and forces keys."""
    import ase.io

    path = Path(data_dir) / f"{name}.extxyz"
    if not path.exists():
        raise JaxmatInputError(f"{path} not found: run python -m jaxmat.heo.curate --out {data_dir} first")
    frames = ase.io.read(path, index=":", format="extxyz")
    missing_energy = [i for i, a in enumerate(frames) if energy_key not in a.info]
    missing_forces = [i for i, a in enumerate(frames) if forces_key not in a.arrays]
    if missing_energy or missing_forces:
        raise JaxmatInputError(f"{path}: {len(missing_energy)} frames lack info[{energy_key!r}] and {len(missing_forces)} lack "
                               f"arrays[{forces_key!r}] (first: {(missing_energy + missing_forces)[0]})")
    if not frames:
        raise JaxmatInputError(f"{path} holds no frames")
    return frames


def covering_subset(frames, size: int, seed: int) -> list[int]:
    """Indices of at most max(size, #elements) frames: one per element (rarest first), then random ones."""
    rng = np.random.default_rng(seed)
    element_sets = [set(a.get_chemical_symbols()) for a in frames]
    frequency = Counter(e for s in element_sets for e in s)
    chosen: list[int] = []
    covered: set[str] = set()
    for element, _ in sorted(frequency.items(), key=lambda item: (item[1], item[0])):
        if element in covered:
            continue
        candidates = [i for i, s in enumerate(element_sets) if element in s]
        pick = int(rng.choice(candidates))
        chosen.append(pick)
        covered |= element_sets[pick]
    rest = [i for i in rng.permutation(len(frames)) if i not in set(chosen)]
    return chosen + [int(i) for i in rest[:max(0, size - len(chosen))]]


def base_structures(pool, base: dict, seed: int):
    """Unlabelled base-model structures: rattled curated ones (element coverage first) and rock-salt HEO cells."""
    from jaxmat.heo.generate import rocksalt_heo

    rng = np.random.default_rng(seed)
    structures = []
    for index in covering_subset(pool, base["curated_structures"], seed):
        for _ in range(base["copies"]):
            atoms = pool[index].copy()
            atoms.calc = None
            for key in list(atoms.arrays):
                if key not in ("numbers", "positions"):
                    del atoms.arrays[key]
            atoms.info = {"origin": f"curated:{pool[index].info.get('immutable_id', index)}"}
            atoms.positions += rng.normal(0.0, rng.uniform(*base["rattle"]), atoms.positions.shape)
            structures.append(atoms)
    repeats = [tuple(r) for r in base["rocksalt_repeats"]]
    for k in range(base["rocksalt_cells"]):
        atoms = rocksalt_heo(repeats[k % len(repeats)], base["cations"], seed=int(rng.integers(2**31)),
                             a=float(rng.uniform(*base["rocksalt_a"])), rattle=float(rng.uniform(*base["rocksalt_rattle"])))
        atoms.info = {"origin": "rocksalt"}
        structures.append(atoms)
    return structures


def mace_options(stage: str, config: dict, paths: dict) -> dict:
    """The mace_run_train YAML of a stage ('base' or 'finetune') as a dict."""
    common = {"name": stage, "seed": config["seed"], "device": config["device"], "work_dir": str(paths["work"]),
              "restart_latest": True, "save_cpu": True, "error_table": "PerAtomRMSE"}
    if stage == "base":
        return {**config["base"]["mace"], **common, "train_file": str(paths["train"]),
                "energy_key": "REF_energy", "forces_key": "REF_forces"}
    data = config["data"]
    options = {**config["finetune"]["mace"], **common, "foundation_model": str(paths["foundation"]),
               "train_file": str(paths["train"]), "valid_file": str(paths["valid"]), "test_file": str(paths["test"]),
               "energy_key": data["energy_key"], "forces_key": data["forces_key"], "model": "MACE"}
    return options


def run_mace_train(options: dict, stage_dir: Path, progress: bool = True) -> Path:
    """Write STAGE/mace_config.yaml, run mace_run_train on it (log in STAGE/train.log); returns the model path."""
    import yaml

    stage_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_atomically(stage_dir / "mace_config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(options, sort_keys=False)))
    set_aside_unreadable_checkpoints(Path(options["work_dir"]))
    log_path = stage_dir / "train.log"
    command = [sys.executable, "-m", "mace.cli.run_train", "--config", str(config_path)]
    with open(log_path, "a") as log:
        log.write(f"# {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=stage_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if progress and any(key in line for key in ("Epoch", "Error", "Traceback")):
                print(f"[{options['name']}] {line.rstrip()}", file=sys.stderr)
        code = process.wait()
    model = Path(options["work_dir"]) / f"{options['name']}.model"
    if code != 0 or not model.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"mace_run_train failed for stage {options['name']} (exit {code}); last lines of {log_path}:\n{tail}")
    return model


def training_curves(work_dir: Path) -> dict[str, list]:
    """Per-epoch training loss (mean of the optimisation steps) and validation loss/RMSEs from mace's results file.

    A resumed mace_run_train appends to the same file, starting again at its checkpoint's epoch (each run
    opens with an evaluation without an epoch): an epoch a later run trained again is taken from that run
    only, so every epoch appears once."""
    runs: list[list[dict]] = []
    for path in sorted((work_dir / "results").glob("*_train.txt")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if not runs or (record.get("mode") == "eval" and record.get("epoch") is None):
                runs.append([])
            runs[-1].append(record)
    train: dict[int, list] = {}
    valid: dict[int, dict] = {}
    for records in runs:
        run_train: dict[int, list] = {}
        for record in records:
            if record.get("mode") == "opt":
                run_train.setdefault(int(record["epoch"]), []).append(record["loss"])
            elif record.get("mode") == "eval" and record.get("epoch") is not None:
                valid[int(record["epoch"])] = record
        train.update(run_train)
        redone = min(run_train, default=None)
        if redone is not None:  # epochs after this run's start that an earlier run reached are this run's
            train = {e: v for e, v in train.items() if e < redone or e in run_train}
    curves = {"epoch": sorted(train), "train_loss": [float(np.mean(train[e])) for e in sorted(train)],
              "valid_epoch": sorted(valid)}
    curves["valid_loss"] = [valid[e]["loss"] for e in curves["valid_epoch"]]
    curves["valid_rmse_e_per_atom_meV"] = [1000 * valid[e].get("rmse_e_per_atom", float("nan")) for e in curves["valid_epoch"]]
    curves["valid_rmse_f_meV_per_A"] = [1000 * valid[e].get("rmse_f", float("nan")) for e in curves["valid_epoch"]]
    return curves


def set_aside_unreadable_checkpoints(work_dir: Path) -> list[Path]:
    """Move mace checkpoints that cannot be loaded (a save cut short by a kill) to CHECKPOINTS/unreadable/,
    with a warning: mace_run_train would otherwise silently start the stage from scratch or fail."""
    import torch

    folder = Path(work_dir) / "checkpoints"
    moved = []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # truncated zip, bad pickle...
            target = folder / "unreadable" / path.name
            target.parent.mkdir(exist_ok=True)
            path.replace(target)
            moved.append(target)
            print(f"warning: mace checkpoint {path} is unreadable ({type(error).__name__}); moved to {target}, "
                  f"the stage resumes from the previous checkpoint", file=sys.stderr)
    return moved


def plot_curves(curves: dict, title: str, path: Path) -> None:
    from jaxmat.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(curves["epoch"], curves["train_loss"], "o-", label="train")
    axes[0].plot(curves["valid_epoch"], curves["valid_loss"], "s-", label="validation")
    axes[0].set_yscale("log"), axes[0].set_ylabel("loss"), axes[0].legend()
    axes[1].plot(curves["valid_epoch"], curves["valid_rmse_e_per_atom_meV"], "s-", color="tab:orange")
    axes[1].set_ylabel("validation energy RMSE (meV/atom)")
    axes[2].plot(curves["valid_epoch"], curves["valid_rmse_f_meV_per_A"], "s-", color="tab:green")
    axes[2].set_ylabel("validation force RMSE (meV/Å)")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def publish_stage(model: Path, stage: Path, title: str, plot_path: Path, target: Path) -> Path:
    """STAGE/curves.json and the loss-curve PNG of a finished mace_run_train stage; its model copied to target."""
    curves = training_curves(stage / "mace")
    write_json(stage / "curves.json", curves, indent=None)
    plot_curves(curves, title, plot_path)
    return copy_file(model, target)


def _model_numbers(path: Path) -> list[int]:
    import mace  # noqa: F401  -- before e3nn
    import torch

    return [int(z) for z in torch.load(path, map_location="cpu", weights_only=False).atomic_numbers]


def build_base(config: dict, pool, out: Path, progress: bool = True) -> Path:
    """CHGNet-labelled base set (OUT/base/train.extxyz) and the base MACE (OUT/base.model)."""
    from jaxmat.forcefields.chgnet import label

    stage = out / "base"
    stage.mkdir(parents=True, exist_ok=True)
    labelled_path = stage / "train.extxyz"
    if not labelled_path.exists():
        structures = base_structures(pool, config["base"], config["seed"])
        write_frames(labelled_path, label(structures, energy_key="REF_energy", forces_key="REF_forces",
                                          batch_size=config["base"]["chgnet_batch_size"], progress=progress))
    options = mace_options("base", config, {"work": stage / "mace", "train": labelled_path})
    return publish_stage(run_mace_train(options, stage, progress), stage, "base model (CHGNet labels)",
                         out / "loss_base.png", out / "base.model")


def finetune(config: dict, progress: bool = True) -> dict:
    """Run the stages named by the config; returns the summary (also OUT/summary.json)."""
    config = resolve_finetune_config(config)
    out = Path(config["out"]).absolute()
    out.mkdir(parents=True, exist_ok=True)
    data = config["data"]
    splits = {name: read_split(data["dir"], name, data["energy_key"], data["forces_key"]) for name in ("train", "val", "test")}
    base_pool = splits["train"] + splits["val"]  # the finetuning data's structures: the base must know their elements
    if data["max_train"]:
        order = np.random.default_rng(config["seed"]).permutation(len(splits["train"]))[:data["max_train"]]
        splits["train"] = [splits["train"][i] for i in sorted(order)]
    timings = {}
    foundation = config["foundation"]["model"]
    started = time.perf_counter()
    if foundation == "base":
        base_path = out / "base.model"
        if not base_path.exists():
            build_base(config, base_pool, out, progress)
        foundation_path = base_path
        timings["base_seconds"] = time.perf_counter() - started
    elif foundation in MACE_MP_NAMES:
        foundation_path = foundation  # mace-torch downloads it
    else:
        foundation_path = Path(foundation).absolute()
        if not foundation_path.exists():
            raise JaxmatInputError(f"foundation model {foundation} not found (a MACE-MP name such as 'medium', a .model path, or 'base')")
    dropped_test = {}
    if isinstance(foundation_path, Path):
        model_numbers = _model_numbers(foundation_path)
        missing = missing_element_counts(model_numbers, splits["train"] + splits["val"])
        if missing:
            raise JaxmatInputError(f"foundation model {foundation_path} lacks element(s) of the finetuning data "
                                   f"(element: frames) {missing}")
        dropped_test = missing_element_counts(model_numbers, splits["test"])
        if dropped_test:  # mace_run_train's final test table cannot include them
            print(f"test frames with elements the foundation model lacks are left out of mace's test table: {dropped_test}",
                  file=sys.stderr)
            known = set(model_numbers)
            splits["test"] = [a for a in splits["test"] if set(a.numbers.tolist()) <= known]
    stage = out / "finetune"
    finetuned = out / "finetuned.model"
    if not finetuned.exists():
        started = time.perf_counter()
        paths = {"work": stage / "mace", "foundation": foundation_path}
        for name, key in (("train", "train"), ("val", "valid"), ("test", "test")):
            paths[key] = write_frames(stage / f"{name}.extxyz", splits[name])
        try:
            model = run_mace_train(mace_options("finetune", config, paths), stage, progress)
        except RuntimeError as error:
            if isinstance(foundation_path, str):
                raise RuntimeError(f"{error}\nfoundation model {foundation_path!r} is downloaded by mace-torch; without network "
                                   f"give its local path as foundation.model") from error
            raise
        publish_stage(model, stage, f"finetuning on {data['energy_key']}/{data['forces_key']}", out / "loss_finetune.png", finetuned)
        timings["finetune_seconds"] = time.perf_counter() - started
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"config": config, "foundation": str(foundation_path), "models": {"finetuned": str(finetuned)},
                    "frames": {name: len(frames) for name, frames in splits.items()},
                    "test_frames_left_out": dropped_test})
    if foundation == "base":
        summary["models"]["base"] = str(out / "base.model")
    summary.setdefault("timings", {}).update(timings)
    write_json(summary_path, summary, indent=2)
    return summary


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.heo.finetune", __doc__)
    parser.add_argument("--config", required=True, help="YAML run config (configs/heo_finetune.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config entry")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = apply_overrides(load_config(args.config), args.set)
    try:
        summary = finetune(config, progress=not args.no_progress)
    except RuntimeError as error:  # mace-torch's training refused the data or the run
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(summary['models'].values())} ({summary['frames']} frames; timings {summary['timings']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
