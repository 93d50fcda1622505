"""python -m jaxmat.relax resumes OUT.partial only when it came from the same run (input structures and the
settings that change results, recorded in OUT.partial.json); anything else is refused, never mixed."""

import json
import shutil

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from jaxmat.relax.__main__ import LATER_SETTINGS, main

LJ = "lj:3.4,0.0104,6.0"
N = 4


def argon(repeat, seed, a=5.3):
    atoms = bulk("Ar", "fcc", a=a, cubic=True) * repeat
    atoms.rattle(0.08, seed=seed)
    return atoms


def structures():
    return [argon((1, 1, 1), seed=s) for s in range(N)]


class Killed(BaseException):
    """Stands for a kill: raised after the k-th frame is appended (not an Exception, so nothing catches it)."""


def command(source, out, *extra):
    return [str(source), "--model", LJ, "--fmax", "1e-3", "--max-steps", "200", "--no-progress", "--out", str(out),
            *extra]


def killed_after(monkeypatch, k, argv):
    """Run the command until it has appended k frames to OUT.partial, the way a kill leaves it."""
    import jaxmat.files

    append, count = jaxmat.files.append_frame, [0]

    def append_then_die(path, atoms):
        append(path, atoms)
        count[0] += 1
        if count[0] == k:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(jaxmat.files, "append_frame", append_then_die)
        with pytest.raises(Killed):
            main(argv)


@pytest.fixture(scope="module", autouse=True)
def restore_precision():
    """The command's entry point sets JAX's process-wide precision (float64, or float32 for --dtype float32):
    put back what the test session had, or later modules (e.g. test_train's in-process training compared
    with a CLI run) compute in another precision."""
    import jax

    previous = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The input, an uninterrupted run's output and a run killed after 2 frames (OUT.partial + its manifest)."""
    folder = tmp_path_factory.mktemp("resume")
    source = folder / "in.extxyz"
    ase.io.write(source, structures())
    full = folder / "full.extxyz"
    # a manifest of other settings without OUT.partial (killed before the first frame) does not hold a new run up
    manifest(full).write_text(json.dumps({"version": 1, "input": "old.extxyz", "n_structures": 9, "fmax": 0.5}))
    assert main(command(source, full)) == 0
    assert len(ase.io.read(full, index=":")) == N and not manifest(full).exists()
    killed = folder / "killed" / "out.extxyz"
    killed.parent.mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        killed_after(monkeypatch, 2, command(source, killed))
    return source, full, killed


@pytest.fixture
def killed(made, tmp_path):
    """A fresh copy of the killed run's folder: (input, reference output, OUT whose OUT.partial* exist)."""
    source, full, killed = made
    shutil.copytree(killed.parent, tmp_path / "run")
    out = tmp_path / "run" / killed.name
    assert len(ase.io.read(partial(out), index=":", format="extxyz")) == 2 and manifest(out).exists() and not out.exists()
    return source, full, out


def partial(out):
    return out.with_name(out.name + ".partial")


def manifest(out):
    return out.with_name(out.name + ".partial.json")


def same_result(out, full):
    ours, theirs = ase.io.read(out, index=":"), ase.io.read(full, index=":")
    assert [a.info["input_index"] for a in ours] == list(range(N))
    for a, b in zip(ours, theirs, strict=True):
        assert (a.info["status"], a.info["n_steps"]) == (b.info["status"], b.info["n_steps"])
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)


def refused(argv, out, capsys):
    """Exit status 2, one error line; OUT.partial left as it was and no OUT written."""
    before = partial(out).read_text()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume from ") and "\n" not in err, err
    assert str(partial(out)) in err and "delete" in err and "--out" in err
    assert partial(out).read_text() == before and not out.exists()
    return err


def test_same_input_and_settings_resume_to_the_uninterrupted_result(killed, capsys):
    source, full, out = killed
    capsys.readouterr()
    assert main(command(source, out)) == 0
    captured = capsys.readouterr()
    assert f"resuming: 2 of {N} structures already done" in captured.err
    assert f"({N - 2} relaxed in this run, 2 taken from {partial(out).name})" in captured.out
    same_result(out, full)
    assert not partial(out).exists() and not manifest(out).exists()  # nothing left to resume from by mistake


def test_a_manifest_without_the_cell_and_constraint_settings_resumes(killed, capsys):
    """Written before --cell-filter, --pressure, --fix-atoms, ... existed: their defaults; another value is refused."""
    source, full, out = killed
    recorded = json.loads(manifest(out).read_text())
    for key in LATER_SETTINGS:
        recorded.pop(key)
    manifest(out).write_text(json.dumps(recorded))
    assert "--pressure 1.0 (partial file: None)" in refused(command(source, out, "--relax-cell", "--pressure", "1"), out, capsys)
    assert main(command(source, out)) == 0
    same_result(out, full)


def test_a_renamed_copy_of_the_input_resumes(killed, tmp_path, capsys):
    source, full, out = killed
    copy = tmp_path / "elsewhere" / "renamed.xyz"
    copy.parent.mkdir()
    shutil.copyfile(source, copy)
    capsys.readouterr()
    assert main(command(copy, out)) == 0
    assert f"resuming: 2 of {N} structures already done" in capsys.readouterr().err
    same_result(out, full)


@pytest.mark.parametrize("change", ["positions", "fewer", "order"])
def test_different_input_structures_are_refused(killed, tmp_path, capsys, change):
    source, _, out = killed
    other = structures()
    if change == "positions":
        other[3].positions[0, 0] += 1e-6
    elif change == "fewer":
        other = other[:1]
    else:
        other = other[::-1]
    different = tmp_path / "other.extxyz"
    ase.io.write(different, other)
    err = refused(command(different, out), out, capsys)
    assert "input structures differ" in err and str(different) in err and str(source) in err


@pytest.mark.parametrize("flag, value, setting", [
    ("--model", "morse", "--model morse"), ("--model", "lj:3.4,0.0104,6.5", "--model lj:3.4,0.0104,6.5"),
    ("--fmax", "0.01", "--fmax 0.01"), ("--optimizer", "lbfgs", "--optimizer lbfgs"),
    ("--max-steps", "50", "--max-steps 50"), ("--dtype", "float32", "--dtype float32"),
    ("--backend", "jax", "--backend jax"), ("--relax-cell", None, "--relax-cell True"),
])
def test_different_settings_are_refused(killed, capsys, flag, value, setting):
    source, _, out = killed
    argv = command(source, out)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag] if value is None else [flag, value]
    err = refused(argv, out, capsys)
    assert setting in err and "input structures" not in err


def test_the_reviewers_case_another_input_and_model(killed, tmp_path, capsys):
    """An Ar run killed, then MgO with --model morse to the same --out: refused, naming both."""
    _, _, out = killed
    mgo = tmp_path / "mace_in.extxyz"
    ase.io.write(mgo, [bulk("MgO", "rocksalt", a=4.2 + 0.01 * k) for k in range(1)])
    err = refused(command(mgo, out)[:1] + ["--model", "morse"] + command(mgo, out)[3:], out, capsys)
    assert "input structures differ" in err and "--model morse" in err and "resuming" not in err


def test_a_partial_file_without_manifest_is_refused(killed, capsys):
    source, _, out = killed
    manifest(out).unlink()  # as an older jaxmat left it
    err = refused(command(source, out), out, capsys)
    assert manifest(out).name in err and "older jaxmat" in err


def test_more_done_structures_than_the_input_has_are_refused(killed, capsys):
    source, _, out = killed
    frame = ase.io.read(partial(out), index=0, format="extxyz")
    frame.info["input_index"] = 9
    ase.io.write(out.with_name("extra.extxyz"), frame, format="extxyz")
    with open(partial(out), "a") as handle:
        handle.write(out.with_name("extra.extxyz").read_text())
    err = refused(command(source, out), out, capsys)
    assert "structures [9]" in err and f"has {N}" in err and f"{N + 1} of {N}" not in err

