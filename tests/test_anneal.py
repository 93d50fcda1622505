"""jaxmat.heo.anneal: the swap sampler on HEO cells (compositions kept, anions fixed, the energies it carries are the
model's for the arrangements it reports), short-range order at high and low temperature, the command's outputs,
its resume after a kill and its input errors."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest

from jaxmat.heo import anneal as anneal_module
from jaxmat.heo import sampling
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.heo.pair_model import SpeciesPairEnergy

CATIONS = [12, 27, 28, 29, 30]


def pair_model(unlike=0.05):
    """First-shell pair energy over O and the five HEO cations: unlike cation pairs cost ``unlike`` eV."""
    numbers = [8] + CATIONS
    J = np.full((6, 6), unlike)
    J[0, :] = J[:, 0] = 0.0
    np.fill_diagonal(J, 0.0)
    return SpeciesPairEnergy(numbers, J, 3.5)


def test_sro_at_low_and_very_high_temperature():
    cells = [rocksalt_heo(2, seed=s, mode="equimolar", rattle=0.05) for s in range(8)]
    result = anneal_module.anneal(cells, pair_model(), [300.0, 1e7], 24, seed=1)
    hot, cold = result.temperature == 1e7, result.temperature == 300.0
    n = 32  # cation sites per cell; a random arrangement at fixed counts has alpha_ab = -1 / (n - 1) off the diagonal
    half = result.alpha[12:]
    unlike = ~np.eye(5, dtype=bool)
    hot_alpha = np.nanmean(half[:, hot], axis=(0, 1))[unlike] + 1 / (n - 1)  # 0 for a random solution
    assert abs(np.mean(hot_alpha)) < 0.015 and np.all(np.abs(hot_alpha) < 0.08), hot_alpha
    assert np.nanmean(half[:, cold][..., unlike]) > 0.08  # unlike neighbours avoided: clustering under way
    assert np.all(result.best_energy <= result.trace_energy.min(axis=0) + 1e-12)
    assert np.mean(result.trace_energy[-1, cold]) < np.mean(result.trace_energy[-1, hot])


def test_mace_swaps_keep_compositions_and_anions_and_carry_the_model_energy():
    import mace  # noqa: F401

    from jaxmat.forcefields.base import batch_from_atoms
    from jaxmat.forcefields.mace.forcefield import MACEJax
    from jaxmat.testing import build_small_mace

    model = MACEJax.from_torch(build_small_mace([8] + CATIONS, seed=1, hidden_irreps="8x0e", r_max=4.5, max_ell=1,
                                                correlation=2, num_interactions=1, radial_mlp=(16,), scale_shift=(5.0, 0.0)))
    cells = [rocksalt_heo(1, seed=3), rocksalt_heo(2, seed=4)]  # 8 and 64 atoms in one batch
    result = anneal_module.anneal(cells, model, [300.0, 2000.0], 3, seed=2)
    for r, (last, best) in enumerate(zip(result.last, result.best)):
        start = cells[result.input_index[r]]
        for atoms in (last, best):
            assert np.array_equal(np.sort(atoms.numbers), np.sort(start.numbers))
            assert np.array_equal(atoms.numbers == 8, start.numbers == 8)
            np.testing.assert_array_equal(atoms.positions, start.positions)
    assert np.any([not np.array_equal(a.numbers, cells[i].numbers) for a, i in zip(result.last, result.input_index)])
    fresh = model(batch_from_atoms(result.last)).energy
    np.testing.assert_allclose(result.energy, fresh, atol=1e-5)
    np.testing.assert_allclose(result.best_energy, model(batch_from_atoms(result.best)).energy, atol=1e-5)
    assert np.all((result.acceptance > 0) & (result.acceptance <= 1))


class Killed(BaseException):
    """Stands for a kill after a checkpoint was written."""


@pytest.fixture
def command(monkeypatch, tmp_path):
    """Runs the command in this process with the pair model standing in for --model (compiles in seconds)."""
    from jaxmat.forcefields import registry

    monkeypatch.setattr(registry, "load_force_field", lambda *args, **kwargs: pair_model())
    cells = tmp_path / "cells.extxyz"
    ase.io.write(cells, [rocksalt_heo(2, seed=s, mode="equimolar") for s in range(2)])

    def run(out, *extra):
        return anneal_module.main([str(cells), "--model", "pairs", "--temperatures", "500,3000", "--sweeps", "7",
                                   "--checkpoint-every", "2", "--out", str(tmp_path / out), *extra])

    return run, tmp_path


def test_command_outputs_and_resume_after_a_kill(command, monkeypatch):
    run, folder = command
    assert run("full", "--exchange") == 0  # with replica exchange: its state resumes too
    saved = sampling.save
    calls = []

    def save_then_die(*args):
        saved(*args)
        calls.append(1)
        if len(calls) == 2:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(sampling, "save", save_then_die)
        with pytest.raises(Killed):
            run("killed", "--exchange")
    assert not (folder / "killed" / "trace.csv").exists() and (folder / "killed" / "checkpoint.npz").exists()
    assert run("killed", "--exchange") == 0
    for name in ("trace.csv", "sro.json", "final.extxyz"):
        assert (folder / "killed" / name).read_text() == (folder / "full" / name).read_text(), name
    rows = list(csv.DictReader(open(folder / "full" / "trace.csv")))
    assert len(rows) == 7 * 4 and {r["temperature"] for r in rows} == {"500", "3000"}
    frames = ase.io.read(folder / "full" / "final.extxyz", ":")
    assert [f.info["state"] for f in frames] == ["last", "lowest"] * 4
    assert all(f.get_potential_energy() >= g.get_potential_energy() for f, g in zip(frames[::2], frames[1::2]))  # info energy, read by ASE
    assert frames[0].info["temperature"] == 500 and 0 < frames[0].info["acceptance"] <= 1
    assert all("exchanges" in f.info for f in frames)  # counts (rare here: 500 and 3000 K are far apart)
    table = json.loads((folder / "full" / "sro.json").read_text())["alpha"]
    assert len(table) == 15 and set(table["Mg-Co"]) == {"500", "3000"}
    assert (folder / "full" / "energy.png").stat().st_size and (folder / "full" / "sro.png").stat().st_size
    assert run("full", "--seed", "5", "--exchange") == 2  # another run's checkpoint is refused
    assert run("full") == 2  # without the exchange: another run too


@pytest.mark.parametrize("change, message", [
    (lambda a: a.numbers.__setitem__(a.numbers != 8, 12), "one cation species"),
    (lambda a: a.numbers.__setitem__(slice(None), 8), "no cations"),
    (lambda a: a.numbers.__setitem__(1, 26), "'Fe'"),
])
def test_bad_structures_are_one_error_line(command, capsys, change, message):
    run, folder = command
    atoms = rocksalt_heo(1, seed=0)
    change(atoms)
    ase.io.write(folder / "cells.extxyz", [atoms])
    assert run("bad") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


@pytest.mark.parametrize("temperatures", ["0,300", "-5", "hot"])
def test_bad_temperatures_are_one_error_line(command, capsys, temperatures):
    run, _ = command
    assert run("bad", "--temperatures", temperatures) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--temperatures" in err[0]
