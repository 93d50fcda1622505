"""Recovery under SIGKILL: the real commands are killed at seeded moments, run again with the same command
line, and compared with one uninterrupted run of the same command.

Each case asserts (a) the rerun resumed (its resume line names what the killed run had finished, finished
epochs / structures are not done again), (b) the final outputs equal the uninterrupted run's (training
losses and parameters bit for bit; energies and positions of every structure), (c) nothing is missing,
duplicated or left half-written. The default run kills each command once; JAXMAT_FAULTS_FULL=1 kills
each at several seeded moments (JAXMAT_FAULTS_SEED changes them, JAXMAT_FAULTS_REPORT=FILE appends one
JSON line per kill: the README's reliability figures).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FULL = os.environ.get("JAXMAT_FAULTS_FULL", "") not in ("", "0")
SEED = int(os.environ.get("JAXMAT_FAULTS_SEED", "13"))
pytestmark = pytest.mark.slow


def moments(n_full: int) -> list[int]:
    return list(range(n_full)) if FULL else [0]


def rng_for(command: str, moment: int) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(command.encode()), moment])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: one persistent XLA cache for the module (reruns compile nothing)."""
    cache = tmp_path_factory.getbasetemp() / "xla-commands"  # shared with tests/test_inputs.py
    return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "JAXMAT_COMPILATION_CACHE": str(cache)}


def run(command, env, log: Path) -> str:
    """Run to the end; returns stdout + stderr (also written to log)."""
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result.stdout + result.stderr


def kill_when(command, env, log: Path, ready, delay: float, timeout: float = 300) -> None:
    """Start the command in its own process group, wait until ready() (polled every 5 ms), wait delay
    seconds more, then SIGKILL the whole group. Fails if the command ended before the kill."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while process.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    ended = process.poll()
    if ended is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert ended is None, f"the command ended (status {ended}) before it could be killed:\n{log.read_text()[-3000:]}"


def record(command: str, moment: int, **figures) -> None:
    report = os.environ.get("JAXMAT_FAULTS_REPORT")
    if report:
        with open(report, "a") as handle:
            handle.write(json.dumps({"command": command, "moment": moment, "seed": SEED, **figures}) + "\n")


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".partial") or "-tmp-" in p.name)


# --- python -m jaxmat.train -------------------------------------------------------------------------------

EPOCHS, BATCHES = 24, 3  # 24 structures in batches of 8
TRAIN_SETS = ["data.source=embedded:heo", "data.limit=24", "train.batch_size=8", "model.hidden=8", "model.n_samples=2",
              "model.stoichiometry_layers=1", "model.structure_layers=1", "data.max_neighbors=4", "train.lr=1e-3",
              f"train.epochs={EPOCHS}"]


def train_command(workdir, extra=()):
    sets = [x for item in [*TRAIN_SETS, *extra] for x in ("--set", item)]
    return [sys.executable, "-m", "jaxmat.train", "--config", str(REPO / "configs/polysrl.yaml"), "--workdir", str(workdir),
            "--no-progress", *sets]


def saved_epochs(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def metrics_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def shared_train_reference(tmp_path_factory, env) -> Path:
    """The uninterrupted training run, made once per session (tests/test_inputs.py uses it too)."""
    workdir = tmp_path_factory.getbasetemp() / "train-reference"
    if not (workdir / "done").exists():
        shutil.rmtree(workdir, ignore_errors=True)
        run(train_command(workdir), env, workdir.parent / "train-reference.log")
        (workdir / "done").write_text("")
    return workdir


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory, env):
    return shared_train_reference(tmp_path_factory, env)


@pytest.mark.parametrize("moment", moments(8))
def test_train_killed_resumes_and_matches(train_reference, env, tmp_path, moment):
    from jaxmat.polysrl.checkpoint import restore_params

    rng = rng_for("train", moment)
    workdir = tmp_path / "run"
    if moment % 4 == 3:  # a moment before (or around) the first checkpoint: start-up, compilation
        started = time.time()
        ready, delay = (lambda: time.time() - started > 1.0), float(rng.uniform(0.0, 8.0))
    else:  # after checkpoint k, k seeded, plus a seeded delay (often lands inside a later save)
        k = int(rng.integers(1, 6 if moment == 0 else EPOCHS - 6))
        ready, delay = (lambda: (workdir / "checkpoints" / str(k)).is_dir()), float(rng.uniform(0.0, 0.08))
    kill_when(train_command(workdir), env, tmp_path / "killed.log", ready, delay)
    finished = max(saved_epochs(workdir), default=0)
    assert finished < EPOCHS
    out = run(train_command(workdir), env, tmp_path / "rerun.log")
    trained = [int(m) for m in re.findall(r"epoch (\d+)/\d+  loss", out)]
    if finished:  # (a) resumed after the last checkpoint on disk: its epochs are not trained again
        assert f"resuming {workdir} after epoch {finished} (step {finished * BATCHES})" in out, out[-3000:]
    else:
        assert "resuming" not in out
    assert trained == list(range(finished + 1, EPOCHS + 1)), out[-3000:]
    # (b) the uninterrupted run's numbers, bit for bit
    assert metrics_rows(workdir) == metrics_rows(train_reference)
    params, meta, epoch = restore_params(workdir)
    reference, _, _ = restore_params(train_reference)
    assert epoch == EPOCHS and meta["step"] == EPOCHS * BATCHES
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(params), _leaves(reference), strict=True))
    # (c) every epoch once, the checkpoints kept are the last ones, nothing half-written
    assert [r["epoch"] for r in metrics_rows(workdir)] == list(range(1, EPOCHS + 1))
    assert saved_epochs(workdir) == saved_epochs(train_reference)
    assert leftovers(workdir) == []
    record("python -m jaxmat.train", moment, done_at_kill=finished, total=EPOCHS, resumed=bool(finished),
           redone=len(trained) - (EPOCHS - finished), lost=0)


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


# --- python -m jaxmat.relax (torch and jax backends) --------------------------------------------------------

N_STRUCTURES = 16


@pytest.fixture(scope="module")
def relax_inputs(tmp_path_factory):
    import mace  # noqa: F401  -- before e3nn
    import ase.io
    import torch

    from jaxmat.heo.generate import rocksalt_heo
    from jaxmat.testing import build_small_mace

    folder = tmp_path_factory.mktemp("relax_inputs")
    torch.save(build_small_mace([8, 12, 27, 28, 29, 30], hidden_irreps="8x0e", max_ell=1, correlation=1,
                                num_interactions=1, radial_mlp=(16,)), folder / "small.model")
    ase.io.write(folder / "in.extxyz", [rocksalt_heo((1, 1, 1), seed=s, rattle=0.15) for s in range(N_STRUCTURES)],
                 format="extxyz")
    return folder


def relax_command(inputs: Path, out: Path, backend: str):
    return [sys.executable, "-m", "jaxmat.relax", str(inputs / "in.extxyz"), "--model", str(inputs / "small.model"),
            "--out", str(out), "--backend", backend, "--max-atoms", "16", "--fmax", "0.02", "--max-steps", "400",
            "--no-progress", "--trajectory", str(out.parent / "trajectory")]


@pytest.fixture(scope="module")
def relax_references(relax_inputs, env, tmp_path_factory):
    """One uninterrupted run per backend, made when first asked for."""
    made = {}

    def reference(backend):
        if backend not in made:
            out = tmp_path_factory.mktemp(f"relax_reference_{backend}") / "out.extxyz"
            run(relax_command(relax_inputs, out, backend), env, out.parent / "run.log")
            made[backend] = out
        return made[backend]

    return reference


def complete_frames(partial: Path, scratch: Path) -> int:
    """Complete frames in an append log (read from a copy: read_frame_log rewrites a truncated file)."""
    from jaxmat.files import read_frame_log

    if not partial.exists():
        return 0
    shutil.copyfile(partial, scratch)
    return len(read_frame_log(scratch)[0])


@pytest.mark.parametrize("moment", moments(6))
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_relax_killed_resumes_and_matches(relax_inputs, relax_references, env, tmp_path, backend, moment):
    import ase.io

    reference = ase.io.read(relax_references(backend), index=":")
    rng = rng_for(f"relax-{backend}", moment)
    out = tmp_path / "out.extxyz"
    partial = out.with_name(out.name + ".partial")
    k = int(rng.integers(1, 4 if moment == 0 else N_STRUCTURES // 2))
    ready = lambda: partial.exists() and partial.read_text().count("Properties=") >= k  # noqa: E731
    kill_when(relax_command(relax_inputs, out, backend), env, tmp_path / "killed.log", ready, float(rng.uniform(0.0, 0.3)))
    done = complete_frames(partial, tmp_path / "copy.extxyz")
    assert 1 <= done < N_STRUCTURES and not out.exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trajectory").iterdir()}
    output = run(relax_command(relax_inputs, out, backend), env, tmp_path / "rerun.log")
    # (a) resumed: the killed run's structures are taken from OUT.partial, not relaxed (nor written) again
    assert f"resuming: {done} of {N_STRUCTURES} structures already done" in output, output[-3000:]
    assert f"({N_STRUCTURES - done} relaxed in this run, {done} taken from {partial.name})" in output
    final = ase.io.read(out, index=":")
    assert len(stamps) >= done and len(list((tmp_path / "trajectory").iterdir())) == N_STRUCTURES
    rewritten = [name for name, stamp in stamps.items() if (tmp_path / "trajectory" / name).stat().st_mtime_ns != stamp]
    assert len(rewritten) == len(stamps) - done  # only a structure whose frame the kill cut short was redone
    # (b) the uninterrupted run's results; (c) every structure once, in input order, nothing left over
    assert [a.info["input_index"] for a in final] == list(range(N_STRUCTURES))
    for ours, theirs in zip(final, reference, strict=True):
        assert (ours.info["status"], ours.info["n_steps"]) == (theirs.info["status"], theirs.info["n_steps"])
        assert ours.get_potential_energy() == pytest.approx(theirs.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(ours.positions, theirs.positions, atol=1e-9)
        np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), atol=1e-9)
    assert not partial.exists() and leftovers(tmp_path) == []
    record(f"python -m jaxmat.relax --backend {backend}", moment, done_at_kill=done, total=N_STRUCTURES, resumed=True,
           redone=len(rewritten), lost=0)  # redone: finished (trajectory written) but its frame not yet saved


# --- python -m jaxmat.heo.finetune (a mace_run_train stage killed mid-run) -----------------------------------

FINETUNE_EPOCHS = 6


@pytest.fixture(scope="module")
def finetune_inputs(tmp_path_factory):
    import mace  # noqa: F401  -- before e3nn
    import ase.io
    import torch

    from jaxmat.resources import resource_path
    from jaxmat.testing import build_small_mace

    folder = tmp_path_factory.mktemp("finetune_inputs")
    frames = ase.io.read(resource_path("lemat_heo_valid.xyz.gz"), index=":14")
    (folder / "curated").mkdir()
    for name, part in (("train", frames[:8]), ("val", frames[8:11]), ("test", frames[11:14])):
        ase.io.write(folder / "curated" / f"{name}.extxyz", part, format="extxyz")
    numbers = sorted({int(z) for a in frames for z in a.numbers})
    torch.save(build_small_mace(numbers, hidden_irreps="8x0e", max_ell=1, correlation=1, num_interactions=1,
                                radial_mlp=(16,)), folder / "foundation.model")
    return folder


def finetune_command(inputs: Path, out: Path):
    sets = [f"out={out}", f"data.dir={inputs / 'curated'}", f"foundation.model={inputs / 'foundation.model'}",
            f"finetune.mace.max_num_epochs={FINETUNE_EPOCHS}"]
    return [sys.executable, "-m", "jaxmat.heo.finetune", "--config", str(REPO / "configs/heo_finetune.yaml"), "--no-progress",
            *[x for item in sets for x in ("--set", item)]]


@pytest.fixture(scope="module")
def finetune_reference(finetune_inputs, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune_reference") / "out"
    run(finetune_command(finetune_inputs, out), env, out.parent / "run.log")
    return out


def mace_checkpoints(out: Path) -> list[Path]:
    folder = out / "finetune" / "mace" / "checkpoints"
    return sorted(folder.glob("*_epoch-*.pt")) if folder.is_dir() else []


def model_state(path: Path) -> dict:
    import torch

    return {k: v.detach().cpu() for k, v in torch.load(path, map_location="cpu", weights_only=False).state_dict().items()}


def run_starts(out: Path) -> list[int]:
    """First trained epoch of each mace_run_train run of the finetuning stage (from mace's results file)."""
    starts, opened = [], False
    for path in sorted((out / "finetune" / "mace" / "results").glob("*_train.txt")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("mode") == "eval" and record.get("epoch") is None:
                opened = True
            elif record.get("mode") == "opt" and opened:
                starts.append(int(record["epoch"]))
                opened = False
    return starts


@pytest.mark.parametrize("moment", moments(4))
def test_heo_finetune_killed_mid_stage_resumes(finetune_inputs, finetune_reference, env, tmp_path, moment):
    """mace_run_train restarts at its checkpoint's epoch (it trains that epoch once more) and its data loader
    is reshuffled, so the finetuned weights match the uninterrupted run's closely, not bit for bit."""
    rng = rng_for("finetune", moment)
    out = tmp_path / "out"
    k = int(rng.integers(0, 2 if moment == 0 else FINETUNE_EPOCHS - 2))
    ready = lambda: any(f"epoch-{e}.pt" in p.name for p in mace_checkpoints(out) for e in range(k, FINETUNE_EPOCHS))  # noqa: E731
    kill_when(finetune_command(finetune_inputs, out), env, tmp_path / "killed.log", ready, float(rng.uniform(0.0, 0.5)))
    assert not (out / "finetuned.model").exists()
    at_kill = [int(p.stem.rsplit("-", 1)[1]) for p in mace_checkpoints(out)]
    output = run(finetune_command(finetune_inputs, out), env, tmp_path / "rerun.log")
    log = (out / "finetune" / "train.log").read_text()
    # (a) the killed stage resumed from its last checkpoint instead of starting again
    starts = run_starts(out)
    if at_kill:
        rerun = log.split(f"# {sys.executable} -m mace.cli.run_train")[-1]
        assert re.search(rf"Loading checkpoint: \S+_epoch-{max(at_kill)}\.pt", rerun), rerun[-3000:]
        assert starts == [0, max(at_kill)], starts
    elif "unreadable" not in output:
        assert starts[-1] == 0
    # (c) every epoch once in the curves, nothing half-written
    curves = json.loads((out / "finetune" / "curves.json").read_text())
    reference = json.loads((finetune_reference / "finetune" / "curves.json").read_text())
    assert curves["epoch"] == curves["valid_epoch"] == reference["epoch"] == list(range(FINETUNE_EPOCHS))
    assert leftovers(out) == []
    # (b) the finetuned model: complete, and close to the uninterrupted run's
    ours, theirs = model_state(out / "finetuned.model"), model_state(finetune_reference / "finetuned.model")
    assert ours.keys() == theirs.keys()
    assert curves["valid_loss"][-1] == pytest.approx(reference["valid_loss"][-1], rel=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == {"train": 8, "val": 3, "test": 3}
    record("python -m jaxmat.heo.finetune", moment, done_at_kill=max(at_kill, default=-1) + 1, total=FINETUNE_EPOCHS,
           resumed=bool(at_kill), redone=1 if at_kill else 0, lost=0)


# --- python -m jaxmat.evaluate (no partial state: a killed evaluation leaves no results, the rerun redoes it) --

TASK = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaAs", "Fe2O3", "TiO2", "Al2O3", "SiO2",
        "CuO", "NiO", "CoO", "ZnO", "MnO2", "Cr2O3", "V2O5", "NbN", "TaC", "WC"]


def evaluate_command(workdir: Path, task: Path, out: Path):
    return [sys.executable, "-m", "jaxmat.evaluate", "--workdir", str(workdir), "--task", str(task), "--folds", "3",
            "--epochs", "400", "--out", str(out)]


@pytest.fixture(scope="module")
def evaluate_reference(train_reference, env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate_reference")
    task = folder / "task.csv"
    task.write_text("formula,target\n" + "".join(f"{f},{0.37 * len(f):.3f}\n" for f in TASK))
    run(evaluate_command(train_reference, task, folder / "out"), env, folder / "run.log")
    return task, folder / "out"


@pytest.mark.parametrize("moment", moments(4))
def test_evaluate_killed_leaves_no_results_and_reruns_identically(train_reference, evaluate_reference, env, tmp_path, moment):
    task, reference = evaluate_reference
    rng = rng_for("evaluate", moment)
    out, log = tmp_path / "out", tmp_path / "killed.log"
    fold = int(rng.integers(1, 2 if moment == 0 else 3))
    ready = lambda: log.exists() and f"fold {fold}/3" in log.read_text()  # noqa: E731
    kill_when(evaluate_command(train_reference, task, out), env, log, ready, float(rng.uniform(0.0, 0.2)))
    assert not (out / "results.json").exists() and not (out / "predictions.csv").exists()
    run(evaluate_command(train_reference, task, out), env, tmp_path / "rerun.log")
    ours, theirs = (json.loads((folder / "results.json").read_text()) for folder in (out, reference))
    assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    assert len((out / "predictions.csv").read_text().splitlines()) == len(TASK) + 1
    assert leftovers(out) == []
    record("python -m jaxmat.evaluate", moment, done_at_kill=fold, total=3, resumed=False, redone=fold, lost=0)
