"""python -m jaxmat.heo.anneal --md-steps (hybrid swap MC / Langevin MD) and --relax-steps (relaxed swaps): killed after
a checkpoint and run again, each ends with the numbers of an uninterrupted run (arrangements, positions, velocities,
cells and the PRNG streams restored); settings it cannot run are one error line."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from jaxmat.heo import anneal as anneal_module
from jaxmat.heo import sampling
from jaxmat.heo.generate import rocksalt_heo


class Killed(BaseException):
    """Stands for a kill after a checkpoint was written."""


@pytest.fixture
def command(monkeypatch, tmp_path):
    """Runs the command in this process with a Lennard-Jones model standing in for --model (forces move the atoms)."""
    from jaxmat.forcefields import registry
    from jaxmat.forcefields.classical import lennard_jones

    monkeypatch.setattr(registry, "load_force_field", lambda *args, **kwargs: lennard_jones(sigma=2.0, epsilon=0.01, cutoff=5.0))
    cells = tmp_path / "cells.extxyz"
    ase.io.write(cells, [rocksalt_heo(1, seed=s, mode="equimolar", rattle=0.05) for s in range(2)])

    def run(out, *extra):
        return anneal_module.main([str(cells), "--model", "lj", "--temperatures", "600,2000", "--sweeps", "5",
                                   "--checkpoint-every", "2", "--out", str(tmp_path / out), *extra])

    return run, tmp_path


MODES = {"hybrid": ["--md-steps", "6"], "hybrid-npt": ["--md-steps", "6", "--pressure", "1", "--taup", "50"], "relaxed": ["--relax-steps", "3"]}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_command_resumes_after_a_kill_with_the_uninterrupted_numbers(command, monkeypatch, mode):
    run, folder = command
    plain, run = run, (lambda out, *extra: plain(out, *MODES[mode], *extra))
    assert run("full") == 0
    saved = sampling.save
    calls = []

    def save_then_die(*args):
        saved(*args)
        calls.append(1)
        if len(calls) == 2:  # after 4 of 5 rounds
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(sampling, "save", save_then_die)
        with pytest.raises(Killed):
            run("killed")
    assert not (folder / "killed" / "final.extxyz").exists() and (folder / "killed" / "checkpoint.npz").exists()
    with np.load(folder / "killed" / "checkpoint.npz") as data:
        assert int(data["state_sweep"]) == 4
        assert np.any(data["state_velocities"] != 0) if mode.startswith("hybrid") else data["state_cells"].shape == (4, 3, 3)
    assert run("killed") == 0
    for name in ("trace.csv", "sro.json", "final.extxyz"):
        assert (folder / "killed" / name).read_text() == (folder / "full" / name).read_text(), name
    frames = ase.io.read(folder / "full" / "final.extxyz", ":")
    start = ase.io.read(folder / "cells.extxyz", ":")
    assert len(frames) == 8 and np.max(np.abs(frames[0].positions - start[0].positions)) > 1e-3  # MD or relaxation moved atoms
    assert run("full", "--seed", "7") == 2  # another run's checkpoint is refused
    assert run("full", *(["--timestep", "1"] if mode.startswith("hybrid") else ["--relax-cell"])) == 2
    if mode == "hybrid-npt":  # the cells moved (and were restored on resume: the files above are equal)
        assert not np.allclose(frames[0].cell[:], start[0].cell[:])


@pytest.mark.parametrize("extra, message", [
    (["--md-steps", "3", "--exchange"], "one at a time"),
    (["--md-steps", "3", "--relax-steps", "2"], "one at a time"),
    (["--relax-steps", "-1"], "--relax-steps"),
    (["--timestep", "0"], "--timestep"),
    (["--friction", "-1"], "--friction"),
    (["--pressure", "1"], "--pressure"),
])
def test_settings_it_cannot_run_are_one_error_line(command, capsys, extra, message):
    run, _ = command
    assert run("bad", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
