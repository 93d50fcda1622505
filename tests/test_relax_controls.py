"""Constraints and cell options on both loops, step for step against ASE: FixAtoms, FixCartesian, FixCom,
FixSymmetry (fixed and relaxing cells; the space group kept), pressure, hydrostatic strain, constant volume, a strain mask, ExpCellFilter (the reference
HEO study's two protocols, also through the command line); what jaxmat cannot apply is refused by name."""

import warnings

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.constraints import FixAtoms, FixCartesian, FixCom, FixedLine, FixSymmetry
from ase.optimize import FIRE as ASEFIRE
from ase.optimize import LBFGS as ASELBFGS
from ase.optimize import LBFGSLineSearch as ASELineSearch

from jaxmat.errors import ConfigError
from jaxmat.forcefields.base import ase_calculator, batch_from_atoms
from jaxmat.relax import relax
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.optimizers import LBFGS
from cells import ase_cell_filter, rattled_argon

ASE_OPTIMIZERS = {"fire": ASEFIRE, "lbfgs": ASELBFGS, "lbfgs-linesearch": ASELineSearch}
MODEL = "lj:3.4,0.0104,6.0"


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """ASE's filters make thousands of 3x3 LAPACK calls (logm, expm_frechet): on a busy machine a BLAS thread
    pool waits on each one (10x slower on two shared cores)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn / pymatgen's dependencies
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def lj(x64):
    from jaxmat.forcefields.classical import lennard_jones

    return lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)  # argon, Å and eV


def argon(seed, a=5.3, strained=False):
    """16 argon atoms, rattled; strained: a sheared, squeezed cell 6 % too large (a=5.6)."""
    return rattled_argon(seed, (2, 2, 1), a, strained)


def constrained(seed, constraint, **kwargs):
    atoms = argon(seed, **kwargs)
    atoms.set_constraint(constraint)
    return atoms


def ase_run(atoms, lj, optimizer, fmax, cell=None):
    """ASE's own relaxation: (atoms, steps)."""
    theirs = atoms.copy()
    theirs.calc = ase_calculator(lj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        runner = ASE_OPTIMIZERS[optimizer](ase_cell_filter(cell, theirs) if cell else theirs, logfile=None)
        runner.run(fmax=fmax, steps=1000)
    return theirs, runner.nsteps


def assert_like_ase(results, structures, lj, optimizer, fmax, cell=None, atol=1e-8):
    for k, (mine, atoms) in enumerate(zip(results, structures)):
        theirs, steps = ase_run(atoms, lj, optimizer, fmax, cell)
        assert mine.status == "converged" and mine.n_steps == steps, (k, mine.status, mine.n_steps, steps)
        np.testing.assert_allclose(mine.atoms.positions, theirs.positions, atol=atol, err_msg=f"structure {k}")
        np.testing.assert_allclose(mine.atoms.cell[:], theirs.cell[:], atol=atol, err_msg=f"structure {k}")


def ours(optimizer):
    return LBFGS(curvature_check=False) if optimizer == "lbfgs" else optimizer  # ASE's exact L-BFGS


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_constraints_take_ases_steps(lj, loop, optimizer):
    """Constrained and free systems in one batch, fixed cells: same steps and positions as ASE. FixAtoms with FixCom
    (ASE's FixCom then gives the fixed atom a force it cannot follow) only under FIRE: L-BFGS's history amplifies
    rounding there, ASE's own too."""
    structures = [constrained(1, FixAtoms(indices=[0, 3, 5])), constrained(2, FixCartesian([1, 2, 7], mask=(True, False, True))),
                  constrained(3, FixCom()), argon(5)] + ([constrained(4, [FixAtoms([0]), FixCom()])] if optimizer == "fire" else [])
    results = relax(structures, lj, optimizer=ours(optimizer), fmax=1e-3, max_steps=1000, progress=False, loop=loop)
    assert_like_ase(results, structures, lj, optimizer, 1e-3)
    assert np.all(results[0].atoms.positions[[0, 3, 5]] == structures[0].positions[[0, 3, 5]])
    masses = structures[2].get_masses()
    np.testing.assert_allclose(masses @ results[2].atoms.positions, masses @ structures[2].positions, atol=1e-9)


@pytest.mark.parametrize("loop", ["host", "device"])
def test_constraints_with_the_cell_relaxing(lj, loop):
    """FixAtoms and FixCartesian while the Fréchet filter relaxes the cell (fixed atoms move with the cell)."""
    structures = [constrained(5, FixAtoms(indices=[0, 3]), a=5.6, strained=True),
                  constrained(6, FixCartesian([1, 2], mask=(False, True, False)), a=5.6, strained=True)]
    results = relax(structures, lj, optimizer="fire", fmax=1e-3, max_steps=1000, relax_cell=True, progress=False, loop=loop)
    assert_like_ase(results, structures, lj, "fire", 1e-3, CellFilter())


def layered(seed, a=5.3, strained=False):
    """16 argon atoms, one layer lifted 0.25 Å (P4/nmm, a free z parameter; strained: c 4 % longer), rattled
    by 1e-3 Å: (the rattled structure, the same under FixSymmetry, which symmetrises it first)."""
    atoms = bulk("Ar", "fcc", a=a, cubic=True) * (2, 2, 1)
    atoms.positions[atoms.positions[:, 2] < 1.0, 2] += 0.25
    if strained:
        atoms.set_cell(atoms.cell[:] * [1.0, 1.0, 1.04], scale_atoms=True)
    atoms.rattle(1e-3, seed=seed)
    fixed = atoms.copy()
    fixed.set_constraint(FixSymmetry(fixed, symprec=0.01))
    return atoms, fixed


def space_group(atoms) -> str:
    import spglib

    return spglib.get_spacegroup((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=1e-5)


class Pushed:
    """A force field whose forces and stress break the symmetry: every atom pushed by PUSH (eV/Å), a shear SHEAR
    (eV/Å^3) added to the stress; on both loops (its device model too)."""

    PUSH, SHEAR = np.array([0.02, 0.01, 0.0]), np.array([[0.0, 1e-4, 5e-5], [1e-4, 0.0, 0.0], [5e-5, 0.0, 0.0]])

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, batch, compute_stress=False):
        from jaxmat.forcefields.base import ForceFieldOutput

        out = self.inner(batch, compute_stress)
        stress = None if out.stress is None else np.asarray(out.stress) + self.SHEAR
        return ForceFieldOutput(out.energy, np.asarray(out.forces) + self.PUSH, stress)

    def device_model(self):
        params, evaluate = self.inner.device_model()
        push, shear = self.PUSH, self.SHEAR

        def pushed(params, graph):
            energy, forces, stress = evaluate(params, graph)
            return energy, forces + push, stress + shear

        return params, pushed


@pytest.mark.parametrize("loop", ["host", "device"])
def test_fix_symmetry_keeps_the_space_group_as_ase_does(lj, loop):
    """FixSymmetry beside a free system, with fixed and relaxing cells, under forces and a stress that break the
    symmetry: ASE's steps, and the space group kept to 1e-5 Å (the rattled structure relaxed without it loses it)."""
    rattled, fixed = layered(1)
    rattled_cell, fixed_cell = layered(3, a=5.6, strained=True)
    assert space_group(fixed) == space_group(fixed_cell) == "P4/nmm (129)" != space_group(rattled)
    pushed = Pushed(lj)
    results = relax([fixed], pushed, optimizer="fire", fmax=1e-3, max_steps=1000, progress=False, loop=loop)
    assert_like_ase(results, [fixed], pushed, "fire", 1e-3)
    cells = relax([fixed_cell, argon(6, a=5.6, strained=True)], lj, optimizer="fire", fmax=1e-3, max_steps=1000,
                  relax_cell=True, progress=False, loop=loop)
    assert_like_ase(cells, [fixed_cell, argon(6, a=5.6, strained=True)], lj, "fire", 1e-3, CellFilter())
    [sheared] = relax([fixed_cell], pushed, optimizer="fire", fmax=1e-3, max_steps=1000, relax_cell=True, progress=False,
                      loop=loop)
    assert_like_ase([sheared], [fixed_cell], pushed, "fire", 1e-3, CellFilter())
    raw = pushed(batch_from_atoms([sheared.atoms]), compute_stress=True)  # both loops report the force field's own stress
    np.testing.assert_allclose(sheared.stress, np.asarray(raw.stress[0]), atol=1e-12)
    np.testing.assert_allclose(sheared.forces, np.asarray(raw.forces), atol=1e-12)
    assert space_group(sheared.atoms) == "P4/nmm (129)"
    assert space_group(results[0].atoms) == space_group(cells[0].atoms) == "P4/nmm (129)"
    assert cells[0].atoms.get_volume() < fixed_cell.get_volume()
    [free] = relax([rattled], lj, optimizer="fire", fmax=1e-3, max_steps=1000, progress=False, loop="host")
    assert space_group(free.atoms) != "P4/nmm (129)"


CELL_CASES = {
    "pressure": ("fire", CellFilter(pressure=0.5)),
    "hydrostatic": ("lbfgs", CellFilter(hydrostatic_strain=True)),
    "constant-volume": ("fire", CellFilter(constant_volume=True)),
    "mask": ("fire", CellFilter(mask=(1, 0, 1, 0, 1, 1))),  # yy, yz fixed: the Fréchet forces leak into them
    "exp-mask-pressure": ("lbfgs", CellFilter("exp", mask=(1, 1, 1, 0, 0, 0), pressure=0.2)),
}


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_options_take_ases_steps(lj, loop, case):
    optimizer, cell = CELL_CASES[case]
    strained = argon(7, a=5.6, strained=True)
    [mine] = relax([strained], lj, optimizer=ours(optimizer), fmax=1e-3, max_steps=1000, relax_cell=True, cell_filter=cell,
                   progress=False, loop=loop)
    assert_like_ase([mine], [strained], lj, optimizer, 1e-3, cell)
    if case == "constant-volume":
        assert mine.atoms.get_volume() == pytest.approx(strained.get_volume(), rel=2e-3)
    if case == "pressure":  # squeezed beyond the zero-pressure cell
        [free] = relax([strained], lj, optimizer="fire", fmax=1e-3, max_steps=1000, relax_cell=True, progress=False,
                       loop="host")
        assert mine.atoms.get_volume() < free.atoms.get_volume()


REFERENCE = {"fire": CellFilter("exp", hydrostatic_strain=True), "lbfgs-linesearch": CellFilter("exp")}
"""the reference HEO study: ExpCellFilter(atoms, hydrostatic_strain=True) under FIRE, ExpCellFilter(atoms) under
LBFGSLineSearch"""


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("optimizer", list(REFERENCE))
def test_the_reference_protocols(lj, loop, optimizer):
    structures = [argon(7, a=5.6, strained=True), constrained(8, FixAtoms([2]), a=5.1)]
    results = relax(structures, lj, optimizer=optimizer, fmax=1e-2, max_steps=1000, relax_cell=True,
                    cell_filter=REFERENCE[optimizer], progress=False, loop=loop)
    assert_like_ase(results, structures, lj, optimizer, 1e-2, REFERENCE[optimizer], atol=1e-8)


@pytest.mark.parametrize("optimizer, flags", [("fire", ["--hydrostatic-strain"]), ("lbfgs-linesearch", [])])
def test_the_reference_protocols_on_the_command_line(lj, tmp_path, optimizer, flags):
    from jaxmat.relax.__main__ import main

    source, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    ase.io.write(source, [argon(7, a=5.6, strained=True), argon(9, a=5.1)])
    structures = ase.io.read(source, index=":")  # as the command reads them (8 decimals)
    assert main([str(source), "--model", MODEL, "--out", str(out), "--optimizer", optimizer, "--fmax", "1e-2", "--relax-cell",
                 "--cell-filter", "exp", "--no-progress", *flags]) == 0
    for frame, atoms in zip(ase.io.read(out, index=":"), structures):
        theirs, steps = ase_run(atoms, lj, optimizer, 1e-2, REFERENCE[optimizer])
        assert frame.info["status"] == "converged" and frame.info["n_steps"] == steps
        np.testing.assert_allclose(frame.cell[:], theirs.cell[:], atol=1e-7)


def test_fix_atoms_and_pressure_on_the_command_line(lj, tmp_path, capsys):
    from jaxmat.relax.__main__ import fixed_atoms, main

    tagged = argon(3, a=5.6, strained=True)
    tagged.set_tags([1 if k < 4 else 0 for k in range(len(tagged))])
    source = tmp_path / "in.extxyz"
    ase.io.write(source, [tagged])
    tagged = ase.io.read(source)
    cell = CellFilter(pressure=0.3)
    out = tmp_path / "out.extxyz"
    assert main([str(source), "--model", MODEL, "--out", str(out), "--fmax", "1e-3", "--relax-cell", "--pressure", "0.3",
                 "--fix-atoms", "tag:1", "--no-progress", "--max-steps", "1000"]) == 0
    [frame] = ase.io.read(out, index=":")
    theirs, steps = ase_run(_with(tagged, FixAtoms(indices=range(4))), lj, "fire", 1e-3, cell)
    assert frame.info["n_steps"] == steps
    np.testing.assert_allclose(frame.positions, theirs.positions, atol=1e-7)  # extxyz keeps 8 decimals
    assert fixed_atoms("0-2,7", tagged, 0).index.tolist() == [0, 1, 2, 7]
    for flags, error in ((["--fix-atoms", "3,16"], "structure 0 has 16 atoms"), (["--fix-atoms", "tag:x"], "whole number"),
                         (["--pressure", "1"], "--pressure needs --relax-cell"), (["--relax-cell", "--cell-mask", "1,1"], "six 0/1")):
        assert main([str(source), "--model", MODEL, "--out", str(tmp_path / "x.extxyz"), "--no-progress", *flags]) != 0
        assert error in capsys.readouterr().err


def test_fix_symmetry_on_the_command_line(lj, tmp_path, capsys):
    from jaxmat.relax.__main__ import main

    rattled, _ = layered(3, a=5.6, strained=True)
    source, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    ase.io.write(source, [rattled])
    assert main([str(source), "--model", MODEL, "--out", str(out), "--fmax", "1e-3", "--relax-cell", "--fix-symmetry",
                 "--no-progress", "--max-steps", "1000"]) == 0
    [frame] = ase.io.read(out, index=":")
    theirs, steps = ase_run(_with(ase.io.read(source), None), lj, "fire", 1e-3, CellFilter())
    assert frame.info["status"] == "converged" and frame.info["n_steps"] == steps
    np.testing.assert_allclose(frame.positions, theirs.positions, atol=1e-7)  # extxyz keeps 8 decimals
    assert space_group(frame) == "P4/nmm (129)"
    assert main([str(source), "--model", MODEL, "--out", str(tmp_path / "x.extxyz"), "--fix-symmetry", "0"]) != 0
    assert "positive tolerance" in capsys.readouterr().err


def _with(atoms, constraint):
    """A copy of atoms with this constraint (None: FixSymmetry at 0.01 Å, as --fix-symmetry makes it)."""
    atoms = atoms.copy()
    atoms.set_constraint(FixSymmetry(atoms, symprec=0.01) if constraint is None else constraint)
    return atoms


def test_what_jaxmat_cannot_apply_is_refused_by_name(lj):
    line = constrained(1, FixedLine(0, [1.0, 0.0, 0.0]))
    com_first = constrained(2, [FixCom(), FixAtoms([0])])
    _, symmetric = layered(1)
    symmetric.set_constraint([FixAtoms([0])] + symmetric.constraints)
    results = relax([line, com_first, symmetric, argon(3)], lj, optimizer="fire", fmax=1e-2, progress=False, loop="host")
    assert [r.status for r in results] == ["failed", "failed", "failed", "converged"]
    assert "(FixedLine)" in results[0].message and "FixAtoms, FixCartesian, FixCom" in results[0].message
    assert "centre-of-mass constraint before" in results[1].message
    assert "FixSymmetry with other constraints (FixAtoms, FixSymmetry)" in results[2].message
    with pytest.raises(ConfigError, match="needs relax_cell"):
        relax([argon(3)], lj, cell_filter="exp", progress=False)
    with pytest.raises(ValueError, match="six Voigt flags"):
        CellFilter(mask=(1, 1, 1))
    with pytest.raises(ValueError, match="frechet, exp"):
        CellFilter("unit")


def test_a_step_that_breaks_the_symmetry_is_adjusted_as_ase_does(x64):
    """A non-symmetric step of the optimizer rows (atoms and cell): the device's new cell, positions and read-back
    rows are those ASE's FrechetCellFilter.set_positions / get_positions make under FixSymmetry."""
    from ase.filters import FrechetCellFilter

    from jaxmat.relax import geometry
    from jaxmat.relax.optimizers import FIRE
    from jaxmat.relax.state import fresh_block, pack

    _, fixed = layered(3, a=5.6, strained=True)
    cell = CellFilter()
    state = pack([fresh_block(FIRE(), fixed, cell)], [16], np.zeros(16, int), 0, rows=24, systems=2, optimizer=FIRE(),
                 relax_cell=True)
    step = np.random.default_rng(0).normal(scale=0.02, size=state["coords"].shape)
    step[16:24] = 0.0  # padding rows
    positions, cells, rows = geometry.after_step(cell, state, state["coords"] + step, state["active"], True)
    theirs = fixed.copy()
    ase_filter = FrechetCellFilter(theirs)
    ase_filter.set_positions(np.concatenate([fixed.positions + step[:16], ase_filter.get_positions()[16:] + step[24:27]]))
    np.testing.assert_allclose(np.asarray(cells)[0], theirs.cell[:], atol=1e-12)
    np.testing.assert_allclose(np.asarray(positions)[:16], theirs.positions, atol=1e-12)
    np.testing.assert_allclose(np.asarray(rows)[np.r_[0:16, 24:27]], ase_filter.get_positions(), atol=1e-10)
    assert space_group(theirs) == "P4/nmm (129)"
