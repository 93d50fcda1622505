"""Batched relaxation: known minima, agreement with ASE's optimizers, batch == one by one, failures, CLI."""

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.optimize import FIRE as ASEFIRE
from ase.optimize import LBFGS as ASELBFGS

from conftest import write_relax_manifest
from jaxmat.errors import JaxmatInputError
from jaxmat.forcefields.base import ForceFieldOutput, ase_calculator, batch_from_atoms
from jaxmat.relax import relax
from jaxmat.relax.optimizers import LBFGS


@pytest.fixture(scope="module")
def lj():
    from jaxmat.forcefields.classical import lennard_jones

    return lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)  # argon, Å and eV


def argon(repeat=(2, 2, 2), a=5.3, rattle=0.1, seed=0):
    atoms = bulk("Ar", "fcc", a=a, cubic=True) * repeat
    atoms.rattle(rattle, seed=seed)
    return atoms


def mixed_structures():
    """Different sizes and a small triclinic cell (primitive fcc, much narrower than twice the cutoff)."""
    small = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    small.rattle(0.05, seed=7)
    return [argon((2, 2, 2), seed=1), argon((2, 2, 3), seed=2), small, argon((1, 1, 1), seed=3)]


def test_forces_are_minus_energy_gradient(lj, x64):  # the pair potential called directly: in the caller's precision
    atoms = argon(seed=4)
    out = lj(batch_from_atoms([atoms]), compute_stress=True)
    k, h = 5, 1e-5
    for axis in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[k, axis] += h
        minus.positions[k, axis] -= h
        e = lambda s: lj(batch_from_atoms([s])).energy[0]
        assert out.forces[k, axis] == pytest.approx(-(e(plus) - e(minus)) / (2 * h), abs=1e-8)
    assert np.isfinite(out.stress).all()


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_relaxes_to_the_perfect_lattice(lj, optimizer):
    perfect = argon(rattle=0.0)
    e_perfect = lj(batch_from_atoms([perfect])).energy[0]
    [result] = relax([argon(seed=5)], lj, optimizer=optimizer, fmax=1e-4, max_steps=1000, progress=False)
    assert result.status == "converged" and result.fmax < 1e-4
    assert result.energy == pytest.approx(e_perfect, abs=2e-6)  # 32 atoms, fmax 1e-4 eV/Å
    shift = result.atoms.positions - perfect.positions  # a rigid translation of the perfect lattice
    np.testing.assert_allclose(shift - shift.mean(0), 0.0, atol=2e-3)


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("optimizer, seed, atol", [("fire", 6, 1e-8), ("lbfgs", 8, 1e-7)])
def test_takes_the_same_steps_as_ase(lj, optimizer, seed, atol, loop):
    atoms = argon(seed=seed)
    ours = "fire" if optimizer == "fire" else LBFGS(curvature_check=False)
    mine = relax([atoms], lj, optimizer=ours, fmax=1e-3, max_steps=500, progress=False, loop=loop)[0]
    theirs = atoms.copy()
    theirs.calc = ase_calculator(lj)
    runner = (ASEFIRE if optimizer == "fire" else ASELBFGS)(theirs, logfile=None)
    runner.run(fmax=1e-3, steps=500)
    assert mine.n_steps == runner.nsteps
    np.testing.assert_allclose(mine.atoms.positions, theirs.positions, atol=atol)


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_batch_equals_one_by_one(lj, optimizer, loop):
    structures = mixed_structures()
    batched = relax(structures, lj, optimizer=optimizer, fmax=1e-3, max_steps=400, progress=False, loop=loop)
    # a tight atom budget forces in-flight swapping: systems leave and join mid-run
    swapped = relax(structures, lj, optimizer=optimizer, fmax=1e-3, max_steps=400, max_atoms=40, progress=False, loop=loop)
    for i, s in enumerate(structures):
        [alone] = relax([s], lj, optimizer=optimizer, fmax=1e-3, max_steps=400, progress=False, loop="host")
        for other in (batched[i], swapped[i]):
            assert other.status == alone.status == "converged"
            assert other.n_steps == alone.n_steps
            np.testing.assert_allclose(other.atoms.positions, alone.atoms.positions, atol=1e-10)


class NaNForOne:
    """Wraps a force field and poisons the forces of systems with exactly `bad_size` atoms."""

    supported_numbers = frozenset({18})

    def __init__(self, inner, bad_size):
        self.inner, self.bad_size = inner, bad_size

    def __call__(self, batch, compute_stress=False):
        out = self.inner(batch, compute_stress)
        forces = out.forces.copy()
        for s in range(batch.n_systems):
            mask = batch.system_index == s
            if mask.sum() == self.bad_size:
                forces[mask] = np.nan
        return ForceFieldOutput(out.energy, forces, out.stress)


def test_failures_are_isolated(lj):
    structures = mixed_structures()
    overlapping = argon(rattle=0.0)
    overlapping.positions[1] = overlapping.positions[0] + [0.1, 0, 0]
    results = relax(structures + [overlapping], NaNForOne(lj, bad_size=48), optimizer="fire", fmax=1e-3, progress=False)
    assert [r.status for r in results] == ["converged", "failed", "converged", "converged", "failed"]
    assert "non-finite" in results[1].message and "overlap" in results[4].message
    assert results[4].n_steps == 0


def test_unknown_element_refused_before_work(lj):
    ff = NaNForOne(lj, bad_size=-1)
    with pytest.raises(JaxmatInputError, match="structure 1 .*contains Cu"):
        relax([argon(), bulk("Cu", "fcc", a=3.6)], ff, progress=False)


def test_cli_relax_outputs_and_resume(tmp_path, x64):
    from jaxmat.relax.__main__ import main

    structures = mixed_structures()
    source = tmp_path / "in.extxyz"
    ase.io.write(source, structures)
    out = tmp_path / "out.extxyz"
    args = [str(source), "--model", "lj:3.4,0.0104,8.5", "--out", str(out), "--fmax", "1e-3", "--no-progress", "--trajectory", str(tmp_path / "traj")]
    assert main(args) == 0
    frames = ase.io.read(out, index=":")
    assert [f.info["status"] for f in frames] == ["converged"] * 4
    assert all(np.abs(f.get_forces()).max() < 1e-3 for f in frames)
    assert [len(f) for f in frames] == [len(s) for s in structures]
    steps = [f.info["n_steps"] for f in frames]
    assert len(ase.io.read(tmp_path / "traj" / "00001.extxyz", index=":")) == steps[1] + 1
    # resume: a partial file with structures 0 and 2 done -> only 1 and 3 are relaxed again
    partial = tmp_path / "again.extxyz.partial"
    ase.io.write(partial, [frames[0], frames[2]], format="extxyz")
    out2 = tmp_path / "again.extxyz"
    again_args = [str(source), "--model", "lj:3.4,0.0104,8.5", "--out", str(out2), "--fmax", "1e-3", "--no-progress"]
    write_relax_manifest(again_args, out2)  # as the killed run would have left it
    assert main(again_args) == 0
    again = ase.io.read(out2, index=":")
    assert [f.info["n_steps"] for f in again] == steps
    assert not partial.exists()
    # max-steps 0 only evaluates
    assert main([str(source), "--model", "lj:3.4,0.0104,8.5", "--out", str(tmp_path / "eval.extxyz"), "--max-steps", "0", "--no-progress"]) == 0
    evaluated = ase.io.read(tmp_path / "eval.extxyz", index=":")
    assert [f.info["n_steps"] for f in evaluated] == [0] * 4
    np.testing.assert_allclose(evaluated[0].positions, structures[0].positions, atol=1e-7)  # extxyz keeps 8 decimals


def test_stats_count_force_calls(lj):
    results = relax(mixed_structures(), lj, optimizer="fire", fmax=1e-3, progress=False)
    stats = results.stats
    assert stats["structure_evaluations"] == sum(r.n_steps + 1 for r in results)
    assert stats["force_calls"] == max(r.n_steps for r in results) + 1  # all in one batch
    assert 0 < stats["force_seconds"] < stats["total_seconds"]


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
@pytest.mark.parametrize("loop", ["host", "device"])
def test_cell_relaxation_follows_ase_frechet_filter(lj, optimizer, loop):
    from ase.filters import FrechetCellFilter

    strained = argon(a=5.6, seed=9)  # 6 % too large
    strained.set_cell(strained.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.97]]), scale_atoms=True)
    opt = optimizer if optimizer == "fire" else LBFGS(curvature_check=False)
    [mine] = relax([strained], lj, optimizer=opt, fmax=1e-3, max_steps=1000, relax_cell=True, progress=False, loop=loop)
    theirs = strained.copy()
    theirs.calc = ase_calculator(lj)
    runner = (ASEFIRE if optimizer == "fire" else ASELBFGS)(FrechetCellFilter(theirs), logfile=None)
    runner.run(fmax=1e-3, steps=1000)
    assert mine.status == "converged" and mine.n_steps == runner.nsteps
    np.testing.assert_allclose(mine.atoms.cell[:], theirs.cell[:], atol=1e-7)
    np.testing.assert_allclose(mine.atoms.positions, theirs.positions, atol=1e-7)
    assert mine.atoms.get_volume() < strained.get_volume()
    assert np.abs(mine.stress).max() < 1e-3 / len(strained)  # cell forces below fmax


def test_pymatgen_structures_in(lj):
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(argon(seed=10))
    [result] = relax([structure], lj, optimizer="fire", fmax=1e-3, progress=False)
    assert result.status == "converged" and len(result.atoms) == len(structure)
    assert result.structure.composition == structure.composition  # pymatgen out as well


SHARDED_SCRIPT = """
import json, sys
import jax
import numpy as np
sys.path.insert(0, {tests!r})
from test_relax import mixed_structures
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.relax import relax
jax.config.update("jax_enable_x64", True)
results = relax(mixed_structures(), lennard_jones(3.4, 0.0104, 8.5), optimizer={optimizer!r}, fmax=1e-3, progress=False, loop="host")
print(json.dumps({{"devices": jax.device_count(), "steps": [r.n_steps for r in results],
                  "positions": [r.atoms.positions.tolist() for r in results]}}))
"""


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_sharded_over_four_cpu_devices_matches_one_device(lj, optimizer):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = SHARDED_SCRIPT.format(tests=str(Path(__file__).parent), optimizer=optimizer)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    sharded = json.loads(output.strip().splitlines()[-1])
    assert sharded["devices"] == 4
    single = relax(mixed_structures(), lj, optimizer=optimizer, fmax=1e-3, progress=False, loop="host")
    assert sharded["steps"] == [r.n_steps for r in single]
    for positions, r in zip(sharded["positions"], single):
        np.testing.assert_allclose(positions, r.atoms.positions, atol=1e-9)


def test_cli_resume_keeps_saved_frames_and_drops_a_truncated_tail(tmp_path, x64, capsys):
    """A kill during an append leaves half a frame: the rerun drops it with a warning, keeps the complete
    frames as they are (not relaxed again) and relaxes the rest."""
    from jaxmat.relax.__main__ import main

    structures = mixed_structures()
    source = tmp_path / "in.extxyz"
    ase.io.write(source, structures)
    args = [str(source), "--model", "lj:3.4,0.0104,8.5", "--fmax", "1e-3", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "full.extxyz")]) == 0
    full = ase.io.read(tmp_path / "full.extxyz", index=":")
    partial = tmp_path / "cut.extxyz.partial"
    for k in (0, 2):
        full[k].info["marker"] = "saved before the kill"
    ase.io.write(partial, [full[0], full[2]], format="extxyz")
    whole = partial.read_text()
    ase.io.write(tmp_path / "third.extxyz", full[3], format="extxyz")
    third = (tmp_path / "third.extxyz").read_text()
    partial.write_text(whole + third[: len(third) // 2])  # the append of structure 3, cut short
    capsys.readouterr()
    write_relax_manifest(args + ["--out", str(tmp_path / "cut.extxyz")], tmp_path / "cut.extxyz")  # as the killed run left it
    assert main(args + ["--out", str(tmp_path / "cut.extxyz")]) == 0
    err = capsys.readouterr().err
    assert "dropped a truncated last frame" in err and "resuming: 2 of 4" in err
    out = ase.io.read(tmp_path / "cut.extxyz", index=":")
    assert [f.info.get("marker") for f in out] == ["saved before the kill", None, "saved before the kill", None]
    assert [f.info["n_steps"] for f in out] == [f.info["n_steps"] for f in full]
    for a, b in zip(out, full):
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)
    assert not partial.exists()


def test_frame_log_keeps_complete_frames(tmp_path):
    from jaxmat.files import append_frame, read_frame_log

    log = tmp_path / "log.extxyz"
    frames = mixed_structures()[:3]
    for atoms in frames:
        append_frame(log, atoms)
    read, dropped = read_frame_log(log)
    assert dropped == 0 and [len(a) for a in read] == [len(a) for a in frames]
    text = log.read_text()
    log.write_text(text[:-5])  # the last line cut
    read, dropped = read_frame_log(log)
    assert dropped > 0 and len(read) == 2 and log.read_text() == text[: len(text) - 5 - dropped]
    append_frame(log, frames[2])  # appends go on after the clean prefix
    assert len(read_frame_log(log)[0]) == 3
