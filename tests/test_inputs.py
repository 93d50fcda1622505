"""Bad input at every entry point: damaged checkpoints and model files, a diverging loss, a resume that
does not match, unreadable structure files, bad formulas (also random ones, with hypothesis), force fields
that fail. Each gives one clear error naming the input (exit status 2 from a command), nothing half-written.
Longer than 350 lines because it walks every entry point in one place, sharing the fault tests' runs;
split it by entry point when it grows."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mace  # noqa: F401  -- before e3nn
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from conftest import write_relax_manifest
from test_faults import BATCHES, EPOCHS, FULL, REPO, metrics_rows, run, saved_epochs, shared_train_reference, train_command

from jaxmat.errors import FormulaError, JaxmatInputError, StructureError

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "jaxmat-hypothesis")  # its caches stay out of the checkout
FAST = settings(deadline=None, max_examples=600 if FULL else 60, derandomize=not FULL, database=None,  # by default
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # the same 60 examples; FULL: 600 random ones


# --- training: damaged checkpoints, a diverging loss, a resume that does not match -----------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "xla-commands"  # the same cache as tests/test_faults.py
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """The uninterrupted training run of tests/test_faults.py (EPOCHS epochs; the last 3 checkpoints kept)."""
    return shared_train_reference(tmp_path_factory, env)


LAST = EPOCHS


def failing(command, env) -> str:
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_corrupted_latest_checkpoints_fall_back_and_reproduce_the_run(trained, env, tmp_path):
    """The last epoch's arrays damaged, the one before's metadata garbage: the rerun warns about both,
    resumes from the one before them, moves the damaged ones aside and ends with the uninterrupted run's
    numbers, bit for bit."""
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    for data in (workdir / "checkpoints" / str(LAST) / "state").rglob("d/*"):
        data.write_bytes(b"\0" * data.stat().st_size)
    (workdir / "checkpoints" / str(LAST - 1) / "meta" / "metadata").write_text("{not json")
    out = run(train_command(workdir), env, tmp_path / "rerun.log")
    assert f"checkpoint of epoch {LAST}" in out and f"checkpoint of epoch {LAST - 1}" in out
    assert f"falling back to the checkpoint of epoch {LAST - 2}" in out
    assert f"resuming {workdir} after epoch {LAST - 2} (step {(LAST - 2) * BATCHES})" in out
    assert metrics_rows(workdir) == metrics_rows(trained)
    assert saved_epochs(workdir) == saved_epochs(trained)
    assert sorted(p.name.split("-")[0] for p in (workdir / "checkpoints-corrupt").iterdir()) == [str(LAST - 1), str(LAST)]


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_partly_written_checkpoint_is_ignored_and_cleaned(trained, tmp_path):
    from jaxmat.polysrl.checkpoint import checkpoint_manager, restore_params

    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    leftover = workdir / "checkpoints" / f"{LAST + 1}.orbax-checkpoint-tmp-1234567"  # a save cut short by a kill
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "_METADATA").write_text("{")
    assert restore_params(workdir)[2] == LAST and leftover.exists()  # reading changes nothing
    assert checkpoint_manager(workdir).latest_step() == LAST  # a writing manager removes it (in the background)
    for _ in range(200):
        if not leftover.exists():
            break
        time.sleep(0.05)
    assert not leftover.exists()


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_no_readable_checkpoint_is_a_clear_error_and_moves_nothing(trained, tmp_path):
    from jaxmat.polysrl.checkpoint import CheckpointError, checkpoint_manager, restore_checkpoint

    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    epochs = saved_epochs(workdir)
    for epoch in epochs:
        shutil.rmtree(workdir / "checkpoints" / str(epoch) / "state")
    with pytest.raises(CheckpointError, match="no readable checkpoint in") as error:
        restore_checkpoint(checkpoint_manager(workdir), None)
    assert all(f"checkpoint of epoch {e}" in str(error.value) for e in epochs)
    assert saved_epochs(workdir) == epochs and not (workdir / "checkpoints-corrupt").exists()  # nothing moved


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_load_encoder_inputs(trained, tmp_path, caplog):
    from jaxmat.polysrl import load_encoder
    from jaxmat.polysrl.checkpoint import CheckpointError

    with pytest.raises(JaxmatInputError, match="config.yaml not found"):
        load_encoder(tmp_path)
    (tmp_path / "config.yaml").write_text((trained / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_encoder(tmp_path)
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    (workdir / "checkpoints" / str(LAST) / "meta" / "metadata").write_text("")
    with caplog.at_level(logging.WARNING, logger="jaxmat.checkpoint"):
        encoder = load_encoder(workdir)  # the latest good one, with a warning; nothing moved
    assert f"checkpoint of epoch {LAST}" in caplog.text and (workdir / "checkpoints" / str(LAST)).exists()
    assert encoder.embed("Fe2O3")[0].shape == (1, 8)
    with pytest.raises(CheckpointError, match=f"epoch {LAST}"):
        load_encoder(workdir, epoch=LAST)
    with pytest.raises(CheckpointError, match="no checkpoint of epoch 1 "):
        load_encoder(workdir, epoch=1)


NAN_AT_STEP = 2 * BATCHES + 1  # the first step of epoch 3
NAN_SCRIPT = f"""
import sys, jax
real, calls = jax.device_get, [0]
def device_get(tree):  # the step's metrics, fetched once per step: the loss of step {NAN_AT_STEP} becomes NaN
    tree = real(tree)
    if isinstance(tree, dict) and "total" in tree:
        calls[0] += 1
        tree = dict(tree, total=float("nan")) if calls[0] == {NAN_AT_STEP} else tree
    return tree
jax.device_get = device_get
from jaxmat.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(trained, env, tmp_path):
    workdir = tmp_path / "run"
    command = train_command(workdir, ["train.epochs=3"])
    err = failing([sys.executable, "-c", NAN_SCRIPT, *command[3:]], env)
    assert f"the loss is nan at epoch 3, step {NAN_AT_STEP}" in err and "the checkpoint of epoch 2 is kept" in err
    assert saved_epochs(workdir) == [1, 2]
    assert metrics_rows(workdir) == metrics_rows(trained)[:2]


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_resume_refuses_other_package_versions(trained, env, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    meta_path = workdir / "checkpoints" / str(LAST) / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["versions"]["jax"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    err = failing(train_command(workdir, [f"train.epochs={LAST + 1}"]), env)
    assert "by other package versions (jax 0.0.1 -> " in err and "use a new --workdir" in err.lower()
    assert saved_epochs(workdir) == saved_epochs(trained) and len(metrics_rows(workdir)) == LAST


@pytest.mark.slow  # needs the training run shared with tests/test_faults.py
def test_resume_refuses_other_data_or_order(trained):
    from jaxmat.errors import ConfigError
    from jaxmat.polysrl.checkpoint import restore_params
    from jaxmat.polysrl.trainer import _check_checkpoint

    _, meta, epoch = restore_params(trained)
    _check_checkpoint(trained, meta, epoch, meta["data"]["fingerprint"], meta["data"]["rows"])  # the same data: fine
    with pytest.raises(ConfigError, match="different data or a different data order .* Use a new --workdir"):
        _check_checkpoint(trained, meta, epoch, "0" * 64, meta["data"]["rows"])


def test_data_fingerprint_follows_order_and_content():
    from jaxmat.polysrl.dataset import build_dataset
    from jaxmat.polysrl.trainer import data_fingerprint

    dataset = build_dataset({"source": "embedded:heo", "limit": 5, "cutoff": 6.0, "max_neighbors": 4})
    before = data_fingerprint(dataset)
    assert data_fingerprint(dataset) == before
    dataset.ids.reverse(), dataset.formulas.reverse(), dataset.crystals.reverse()
    assert data_fingerprint(dataset) != before


# --- model files: MACE .model, converted directories, PolySRL reference .pt --------------------------------

@pytest.fixture(scope="module")
def small_mace(tmp_path_factory):
    import torch

    from jaxmat.testing import build_small_mace

    path = tmp_path_factory.mktemp("mace") / "small.model"
    torch.save(build_small_mace([8, 12, 27, 28], hidden_irreps="8x0e", max_ell=1, correlation=1, num_interactions=1,
                                radial_mlp=(16,)), path)
    return path


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_truncated_or_foreign_mace_model_is_an_input_error(small_mace, tmp_path, backend):
    import torch

    from jaxmat.forcefields.registry import load_force_field

    truncated = tmp_path / "cut.model"
    truncated.write_bytes(small_mace.read_bytes()[: small_mace.stat().st_size // 2])
    with pytest.raises(JaxmatInputError, match=r"cannot read MACE model .*cut\.model"):
        load_force_field(str(truncated), backend)
    foreign = tmp_path / "weights.model"
    torch.save({"w": torch.zeros(3)}, foreign)
    with pytest.raises(JaxmatInputError, match=r"weights\.model is not a mace-torch model file"):
        load_force_field(str(foreign), backend)


def test_damaged_converted_mace_directory_is_an_input_error(tmp_path):
    from jaxmat.forcefields.registry import load_force_field

    (tmp_path / "conv").mkdir()
    (tmp_path / "conv" / "config.json").write_text("{garbage")
    with pytest.raises(JaxmatInputError, match="cannot read the converted JAX MACE"):
        load_force_field(str(tmp_path / "conv"), "jax")


def test_wrong_reference_checkpoint_is_an_input_error(tmp_path):
    import torch

    from jaxmat.embed import main
    from jaxmat.polysrl import import_reference_checkpoint

    cases = {"tensor.pt": torch.zeros(3), "other.pt": {"encoder.weight": torch.zeros(2, 2)},
             "partial.pt": {"gnn.convs.0.lin.weight": torch.zeros(4, 4), "mean_lin.weight": torch.zeros(4, 4)}}
    for name, value in cases.items():
        torch.save(value, tmp_path / name)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:100])
    for name, match in (("tensor.pt", "holds a Tensor"), ("other.pt", "no gnn.convs.0 weights"),
                        ("partial.pt", "not a complete"), ("cut.pt", "cannot read"), ("missing.pt", "not found")):
        with pytest.raises(JaxmatInputError, match=match):
            import_reference_checkpoint(tmp_path / name)
    assert main(["--reference-checkpoint", str(tmp_path / "other.pt"), "Fe2O3", "--out", str(tmp_path / "e.csv")]) == 2
    assert not (tmp_path / "e.csv").exists()


# --- structures: the relax command and API, read_atoms ------------------------------------------------------

def relax_cli(tmp_path, capsys, *args):
    from jaxmat.relax.__main__ import main

    out = tmp_path / "out.extxyz"
    code = main([*map(str, args), "--out", str(out), "--no-progress"])
    assert not out.exists() and not Path(f"{out}.partial").exists()  # nothing half-written
    return code, capsys.readouterr().err


def test_relax_cli_bad_inputs(tmp_path, capsys, small_mace, x64):
    import ase.io
    from ase.build import bulk

    good = tmp_path / "good.extxyz"
    ase.io.write(good, [bulk("MgO", "rocksalt", a=4.2), bulk("NaCl", "rocksalt", a=5.6)], format="extxyz")
    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "garbage.extxyz").write_bytes(b"\x00\xff garbage\n3\nnot a frame\n")
    (tmp_path / "data.unknownformat").write_text("1 2 3\n")
    for args, match in (((tmp_path / "empty.extxyz", "--model", "lj"), "empty.extxyz"),
                        ((tmp_path / "garbage.extxyz", "--model", "lj"), "cannot read structures from .*garbage.extxyz"),
                        ((tmp_path / "data.unknownformat", "--model", "lj"), "cannot read structures from .*data.unknownformat"),
                        ((tmp_path / "nowhere.extxyz", "--model", "lj"), "structure file .*nowhere.extxyz not found"),
                        ((good, "--model", tmp_path / "missing.model"), "model .*missing.model not found"),
                        ((good, "--model", "lj:1,2,x"), "must be numbers"),
                        ((good, "--model", small_mace), r"structure 1 of .*good.extxyz \(ClNa\) contains Na, Cl")):
        code, err = relax_cli(tmp_path, capsys, *args)
        assert code == 2 and err.startswith("error: "), (args, err)
        assert __import__("re").search(match, err), (match, err)


class Failing:
    """A force field that raises ``error`` for any batch holding a system of `bad_size` atoms, or explodes it."""

    supported_numbers = frozenset({18})

    def __init__(self, inner, bad_size, mode):
        self.inner, self.bad_size, self.mode = inner, bad_size, mode

    def __call__(self, batch, compute_stress=False):
        from jaxmat.forcefields.base import ForceFieldOutput

        sizes = np.bincount(batch.system_index, minlength=batch.n_systems)
        if self.mode == "bug" and self.bad_size in sizes:
            raise RuntimeError("model crashed")
        if self.mode == "numerical" and self.bad_size in sizes:
            raise FloatingPointError("overflow in the model")
        out = self.inner(batch, compute_stress)
        forces = out.forces.copy()
        for s in np.flatnonzero(sizes == self.bad_size):
            forces[batch.system_index == s] *= 1e9
        return ForceFieldOutput(out.energy, forces, out.stress)


def _failing_run(mode):
    from ase.build import bulk

    from jaxmat.forcefields.classical import lennard_jones
    from jaxmat.relax import relax

    structures = [bulk("Ar", "fcc", a=5.3, cubic=True) * r for r in ((1, 1, 1), (2, 1, 1), (1, 1, 1))]
    for i, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=i)
    ff = Failing(lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0), bad_size=8, mode=mode)
    return relax(structures, ff, optimizer="fire", fmax=0.01, max_steps=100, progress=False, loop="host",
                 names=["first", "second", "third"])


@pytest.mark.parametrize("mode", ["numerical", "explode"])
def test_relax_isolates_a_numerical_failure(mode):
    results = _failing_run(mode)
    assert [r.status for r in results] == ["converged", "failed", "converged"]
    assert ("FloatingPointError: overflow" if mode == "numerical" else "exploding forces") in results[1].message


def test_a_force_field_bug_stops_the_run_naming_the_structures():
    """Not a numerical failure: the run stops with one error naming the structures of the failing call."""
    from jaxmat.errors import ForceFieldError

    with pytest.raises(ForceFieldError, match=r"RuntimeError on first, second, third: model crashed") as caught:
        _failing_run("bug")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_relax_of_no_structures_returns_nothing():  # (raised UnboundLocalError from 8d4650a until ed0fa71)
    from jaxmat.forcefields.classical import lennard_jones
    from jaxmat.relax import relax

    assert relax([], lennard_jones(), progress=False) == []


@FAST
@given(st.binary(max_size=300), st.sampled_from(["extxyz", "xyz", "cif", "json", "vasp", "traj", "pdb", "bin"]))
def test_read_atoms_raises_only_input_errors(tmp_path_factory, content, extension):
    from jaxmat.data.sources import read_atoms

    path = tmp_path_factory.mktemp("random") / f"input.{extension}"
    path.write_bytes(content)
    try:
        frames = read_atoms(path)
    except JaxmatInputError as error:
        assert str(path) in str(error)
    else:
        assert len(frames) > 0


finite = st.floats(-50, 50, allow_nan=False)


@FAST
@given(st.lists(st.integers(-5, 130), min_size=0, max_size=6), st.data())
def test_structure_records_raise_only_structure_errors(numbers, data):
    from jaxmat.data.structures import make_record, validate_structure

    coordinate = st.one_of(finite, st.sampled_from([np.nan, np.inf]))
    positions = data.draw(st.lists(st.tuples(coordinate, coordinate, coordinate), min_size=len(numbers), max_size=len(numbers) + 1))
    cell = data.draw(st.lists(st.tuples(finite, finite, finite), min_size=3, max_size=3))
    try:
        validate_structure(make_record("s0", numbers, positions, cell))
    except StructureError as error:
        assert "s0" in str(error)


# --- formulas -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("formula, element", [("Fe0O", "Fe"), ("NaCl0", "Cl"), ("Fe(O)0", "O"), ("Fe-1O", "Fe"),
                                              ("Fe2O-3", "O"), ("Fe1e-400O", "Fe"), ("Fe1e400", "Fe"), ("HO1e-12", "O")])
def test_zero_or_negative_amounts_are_refused_naming_the_element(formula, element):
    from jaxmat.data.formulas import parse_formula

    with pytest.raises(FormulaError, match=rf"amount \S+ of '{element}' in formula '{__import__('re').escape(formula)}'"):
        parse_formula(formula)


@FAST
@given(st.text(max_size=30))
def test_formula_parser_raises_only_formula_errors(text):
    from jaxmat.data.formulas import parse_formula

    try:
        parsed = parse_formula(text)
    except FormulaError:
        return
    assert np.all(parsed.counts > 0) and np.all(np.isfinite(parsed.counts))


@FAST
@given(st.dictionaries(st.sampled_from(["H", "O", "Fe", "Ni", "Zn", "Mg", "Xx", "Qq"]),
                       st.one_of(st.integers(-3, 12), st.floats(-2, 20, allow_nan=False, width=32)), min_size=1, max_size=5))
def test_random_compositions_parse_or_name_the_problem(amounts):
    from jaxmat.data.elements import atomic_number
    from jaxmat.data.formulas import parse_formula

    formula = "".join(f"{symbol}{amount:g}" for symbol, amount in amounts.items())
    written = {symbol: float(f"{amount:g}") for symbol, amount in amounts.items()}
    try:
        parsed = parse_formula(formula)
    except FormulaError as error:  # only for an unknown element or a zero, negative or tiny (< 1e-8) amount
        assert formula in str(error)
        assert any(s in ("Xx", "Qq") or not a >= 1e-8 for s, a in written.items()), error
        return
    expected = {atomic_number(s): a for s, a in written.items()}
    assert dict(zip(parsed.numbers.tolist(), parsed.counts.tolist())) == pytest.approx(expected)


# --- HEO: evaluate's default unsupported: skip, an interrupted finetuning stage's leftovers -------------------

@pytest.fixture(scope="module")
def heo_data(tmp_path_factory):
    import ase.io

    from jaxmat.heo.generate import rocksalt_heo
    from jaxmat.resources import resource_path

    folder = tmp_path_factory.mktemp("curated")
    supported = [rocksalt_heo((1, 1, 1), ["Mg", "Co", "Ni"], seed=s, rattle=0.05) for s in range(3)]
    foreign = [a for a in ase.io.read(resource_path("lemat_heo_valid.xyz.gz"), index=":12") if 22 in a.numbers][:2]
    assert len(foreign) == 2
    for atoms in supported:
        atoms.info["DFT_energy"] = -5.0 * len(atoms)
        atoms.arrays["DFT_forces"] = np.zeros((len(atoms), 3))
    ase.io.write(folder / "test.extxyz", supported + foreign, format="extxyz")
    ase.io.write(folder / "only_foreign.extxyz", foreign, format="extxyz")
    return folder


def heo_evaluate(small_mace, data, out, *sets):
    from jaxmat.heo.evaluate import main

    return main(["--models", str(small_mace), "--data", str(data), "--out", str(out), "--set", "reference=none",
                 "--set", "in_distribution.count=2", "--set", "in_distribution.max_steps=3", *sum((["--set", s] for s in sets), [])])


@pytest.mark.slow
def test_heo_evaluate_skips_frames_a_model_cannot_run(small_mace, heo_data, tmp_path, capsys):
    import ase.io

    out = tmp_path / "report"
    assert heo_evaluate(small_mace, heo_data, out) == 0  # the default: unsupported: skip
    err = capsys.readouterr().err
    assert "test split: leaving out 2 of 5 frames" in err and "'Ti'" in err
    assert len(ase.io.read(out / "test" / "small.extxyz", index=":")) == 3
    assert len(ase.io.read(out / "in_distribution" / "small.extxyz", index=":")) == 2
    left_out = json.loads((out / "evaluation.json").read_text())["left_out"]
    assert left_out["test"]["kept"] == 3 and left_out["test"]["left_out"]["small"]["Ti"] >= 1
    assert (out / "report.md").exists()
    assert heo_evaluate(small_mace, heo_data, tmp_path / "strict", "unsupported=error") == 2
    assert "lack elements of the data" in capsys.readouterr().err and not (tmp_path / "strict" / "test").exists()


@pytest.mark.slow
def test_heo_evaluate_with_nothing_left_is_an_input_error(small_mace, heo_data, tmp_path, capsys):
    out = tmp_path / "report"
    assert heo_evaluate(small_mace, heo_data, out, "test.split=only_foreign", "in_distribution.split=only_foreign") == 2
    err = capsys.readouterr().err
    assert "error: only_foreign split: every one of the 2 frames has elements a model lacks" in err and "Traceback" not in err
    assert not (out / "test").exists() and not (out / "report.md").exists()


def test_finetune_sets_aside_unreadable_mace_checkpoints_and_counts_resumed_epochs_once(tmp_path, capsys):
    import torch

    from jaxmat.heo.finetune import set_aside_unreadable_checkpoints, training_curves

    folder = tmp_path / "mace" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1}, folder / "run_epoch-1.pt")
    (folder / "run_epoch-2.pt").write_bytes((folder / "run_epoch-1.pt").read_bytes()[:80])  # a save cut short
    assert [p.name for p in set_aside_unreadable_checkpoints(tmp_path / "mace")] == ["run_epoch-2.pt"]
    assert sorted(p.name for p in folder.glob("*.pt")) == ["run_epoch-1.pt"] and "unreadable" in capsys.readouterr().err
    results = tmp_path / "mace" / "results"
    results.mkdir()
    lines = [{"mode": "eval", "epoch": None, "loss": 9}, {"mode": "opt", "epoch": 0, "loss": 5}, {"mode": "eval", "epoch": 0, "loss": 4},
             {"mode": "opt", "epoch": 1, "loss": 3}, {"mode": "eval", "epoch": 1, "loss": 2.5},  # killed during epoch 2
             {"mode": "eval", "epoch": None, "loss": 4}, {"mode": "opt", "epoch": 1, "loss": 2}, {"mode": "eval", "epoch": 1, "loss": 1.5},
             {"mode": "opt", "epoch": 2, "loss": 1}, {"mode": "eval", "epoch": 2, "loss": 0.5}]
    (results / "run_train.txt").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"mode": "op')
    curves = training_curves(tmp_path / "mace")
    assert curves["epoch"] == curves["valid_epoch"] == [0, 1, 2]
    assert curves["train_loss"] == [5, 2, 1] and curves["valid_loss"] == [4, 1.5, 0.5]


def test_relax_rerun_after_the_last_frame_was_saved_writes_the_output(tmp_path, capsys, x64):
    """Killed after the last structure's append but before OUT was written: the rerun relaxes nothing."""
    import ase.io
    from ase.build import bulk

    from jaxmat.relax.__main__ import main

    structures = [bulk("Ar", "fcc", a=5.3, cubic=True) for _ in range(2)]
    ase.io.write(tmp_path / "in.extxyz", structures, format="extxyz")
    args = [str(tmp_path / "in.extxyz"), "--model", "lj:3.4,0.0104,6", "--out", str(tmp_path / "out.extxyz"), "--no-progress"]
    assert main(args) == 0
    first = (tmp_path / "out.extxyz").read_text()
    (tmp_path / "out.extxyz").rename(tmp_path / "out.extxyz.partial")
    write_relax_manifest(args, tmp_path / "out.extxyz")  # the killed run's manifest (deleted only once OUT is written)
    capsys.readouterr()
    assert main(args) == 0
    assert "(0 relaxed in this run, 2 taken from out.extxyz.partial)" in capsys.readouterr().out
    assert (tmp_path / "out.extxyz").read_text() == first and not (tmp_path / "out.extxyz.partial").exists()
