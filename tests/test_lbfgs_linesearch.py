"""ASE's LBFGSLineSearch in JAX: the line search trial for trial, relaxations step for step and force call for
force call as ASE (host and device loop, fixed and relaxing cells), systems at different stages in one batch."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import FrechetCellFilter
from ase.optimize import LBFGSLineSearch as ASELineSearch
from ase.stress import full_3x3_to_voigt_6_stress
from ase.utils.linesearch import LineSearch

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.relax import DeviceLoopOptions, linesearch, relax
from jaxmat.relax.optimizers import OPTIMIZERS, LBFGSLineSearch
from cells import rattled_argon

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def lj(x64):
    from jaxmat.forcefields.classical import lennard_jones

    return lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)


PHIS = {  # energy along the line (eV) and its derivative, of the line coordinate a (Å)
    "more-thuente-1": (lambda a: -a / (a**2 + 2.0), lambda a: (a**2 - 2.0) / (a**2 + 2.0) ** 2),
    "more-thuente-2": (lambda a: (a + 0.004) ** 5 - 2 * (a + 0.004) ** 4, lambda a: 5 * (a + 0.004) ** 4 - 8 * (a + 0.004) ** 3),
    "far-minimum": (lambda a: (a - 30.0) ** 2, lambda a: 2 * (a - 30.0)),
    "unbounded": (lambda a: -a, lambda a: -1.0 + 0.0 * a),
    "overshoot": (lambda a: (a - 0.03) ** 2 + 0.5 * (a - 0.03) ** 4, lambda a: 2 * (a - 0.03) + 2 * (a - 0.03) ** 3),
    # slopes inconsistent with the energy (as from a noisy force field): bisections, the xtol warning
    "noisy-1": (lambda a: (a - 0.15279887565579467) ** 2, lambda a: 2 * (a - 0.15279887565579467) + 1.8191164362063943 * np.sin(39.74343423039742 * a)),
    "noisy-2": (lambda a: (a - 0.2160139691316348) ** 2, lambda a: 2 * (a - 0.2160139691316348) + 1.124191210785232 * np.sin(48.48520404903732 * a)),
}


def _ase_trials(phi, dphi, p):
    unit = p / np.linalg.norm(p)
    search, trials = LineSearch(), []
    original = search.step

    def step(stp, f, g, *args):
        stp = original(stp, f, g, *args)
        trials.append((float(stp), search.task[:4]))
        return stp

    search.step = step
    x0 = np.zeros(3)
    search._line_search(lambda x: phi(x @ unit), lambda x: dphi(x @ unit) * unit, x0, p, dphi(0.0) * unit, phi(0.0), None,
                        maxstep=0.2, c1=0.23, c2=0.46, stpmax=50.0)
    return trials


def _our_trials(phi, dphi, p):
    unit = p / np.linalg.norm(p)
    longest = lambda dr: jnp.linalg.norm(jnp.asarray(p)[None] * dr[:, None], axis=-1)
    search, error = linesearch.start(jnp.array([phi(0.0)]), jnp.array([dphi(0.0) * unit @ p]), longest, 0.2)
    assert not bool(error[0])
    trials, cases = [(float(search["stp"][0]), "FG")], set()
    while True:
        a = float(search["stp"][0]) * (p @ unit)
        search, code = linesearch.test(search, jnp.array([phi(a)]), jnp.array([dphi(a) * unit @ p]), longest, 0.2)
        trials.append((float(search["stp"][0]), ["FG", "CONV", "WARN"][int(code[0])]))
        cases.add(int(search["case"][0]))
        if int(code[0]) != linesearch.FG or bool(search["no_update"][0]) or len(trials) > 400:
            return trials, cases


def test_line_search_takes_ases_trial_steps():
    """Every trial step and the outcome of ASE's LineSearch on 1-D energies that visit all four interpolation
    cases, bracketing, bisection, the 0.2 Å step limit, convergence and the stp = stpmax warning."""
    seen_cases, outcomes = set(), set()
    for name, (phi, dphi) in PHIS.items():
        for p in (np.array([1.0, 0.0, 0.0]), np.array([0.3, 0.2, 0.0]), np.array([0.001, 0.0, 0.0]), np.array([0.1, 0.0, 0.05])):
            theirs = _ase_trials(phi, dphi, p)
            ours, cases = _our_trials(phi, dphi, p)
            assert [t[1] for t in ours] == [t[1] for t in theirs], (name, p)
            np.testing.assert_allclose([t[0] for t in ours], [t[0] for t in theirs], rtol=1e-12, err_msg=name)
            seen_cases |= cases
            outcomes.add(theirs[-1][1])
    assert seen_cases >= {1, 2, 3, 4} and outcomes == {"CONV", "WARN"}


class CountingLJ(Calculator):
    """The LJ force field as an ASE calculator that counts its evaluations (energy, forces and stress at once)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, force_field):
        super().__init__()
        self.force_field, self.calls = force_field, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        out = self.force_field(batch_from_atoms([self.atoms]), compute_stress=True)
        self.results = {"energy": float(out.energy[0]), "free_energy": float(out.energy[0]), "forces": np.asarray(out.forces),
                        "stress": full_3x3_to_voigt_6_stress(np.asarray(out.stress[0]))}


class ExactFrechetCellFilter(FrechetCellFilter):
    """ASE's filter whose get_positions returns the rows last set. ASE reads them back through scipy's logm at
    every step (and re-evaluates there): a ~1e-12 eV wobble that the line search's interpolation amplifies."""

    rows = None

    def set_positions(self, new, **kwargs):
        super().set_positions(new, **kwargs)
        self.rows = np.array(new, copy=True)

    def get_positions(self):
        return self.rows.copy() if self.rows is not None else super().get_positions()


def argon(seed, a=5.3, strained=False):
    return rattled_argon(seed, (2, 2, 2), a, strained)


def _ase(atoms, lj, fmax, cell_filter=None):
    theirs = atoms.copy()
    theirs.calc = CountingLJ(lj)
    runner = ASELineSearch(cell_filter(theirs) if cell_filter else theirs, logfile=None)
    runner.run(fmax=fmax, steps=500)
    return theirs, runner.nsteps, theirs.calc.calls


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("seed, fmax", [(8, 1e-3), (1, 1e-3), (8, 0.03)])  # at 0.03 eV/Å a trial inside a search is
def test_same_steps_and_force_calls_as_ase(lj, loop, seed, fmax):  # below fmax: only ASE's points may converge
    atoms = argon(seed)
    run = relax([atoms], lj, optimizer="lbfgs-linesearch", fmax=fmax, max_steps=500, progress=False, loop=loop)
    [mine], stats = run, run.stats
    theirs, steps, calls = _ase(atoms, lj, fmax)
    assert mine.status == "converged" and mine.n_steps == steps
    assert stats["structure_evaluations"] == calls > steps + 1  # line searches took extra force calls
    np.testing.assert_allclose(mine.atoms.positions, theirs.positions, atol=1e-8)


@pytest.mark.parametrize("loop", ["host", "device"])
def test_cell_relaxation_follows_ases_filter(lj, loop):
    """Through the Fréchet cell filter: the same steps and force calls as ASE and positions and cells to 1e-8 Å
    where ASE's logm read-back is exact; with ASE's filter as it is, the same steps and 1e-6 Å."""
    strained = argon(9, a=5.6, strained=True)
    run = relax([strained], lj, optimizer="lbfgs-linesearch", fmax=1e-2, max_steps=500, relax_cell=True, progress=False,
                loop=loop)
    [mine], stats = run, run.stats
    theirs, steps, calls = _ase(strained, lj, 1e-2, ExactFrechetCellFilter)
    assert mine.status == "converged" and mine.n_steps == steps and stats["structure_evaluations"] == calls
    np.testing.assert_allclose(mine.atoms.cell[:], theirs.cell[:], atol=1e-8)
    np.testing.assert_allclose(mine.atoms.positions, theirs.positions, atol=1e-8)
    stock, stock_steps, _ = _ase(strained, lj, 1e-2, FrechetCellFilter)
    assert mine.n_steps == stock_steps
    np.testing.assert_allclose(mine.atoms.positions, stock.positions, atol=1e-6)
    assert mine.atoms.get_volume() < strained.get_volume()


def test_systems_at_different_stages_share_the_batch(lj):
    """Four systems (one small triclinic) in one batch and two at a time with refills, host and device loop:
    each system takes the steps it takes alone."""
    small = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    small.rattle(0.05, seed=7)
    structures = [argon(1), argon(2), small, argon(3)]
    alone = [relax([s], lj, optimizer="lbfgs-linesearch", fmax=1e-3, max_steps=300, progress=False, loop="host")[0] for s in structures]
    for loop, options in (("host", {}), ("device", {}), ("device", {"max_systems": 2, "device_loop": DeviceLoopOptions(max_inner=7)})):
        batched = relax(structures, lj, optimizer="lbfgs-linesearch", fmax=1e-3, max_steps=300, progress=False, loop=loop,
                        **options)
        assert [r.n_steps for r in batched] == [r.n_steps for r in alone]
        assert [r.status for r in batched] == ["converged"] * 4
        for a, b in zip(batched, alone):
            np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-8, err_msg=f"{loop} {options}")


def test_registered_and_max_steps_counts_line_searches(lj):
    assert OPTIMIZERS["lbfgs-linesearch"] is LBFGSLineSearch
    run = relax([argon(8)], lj, optimizer="lbfgs-linesearch", fmax=1e-6, max_steps=4, progress=False, loop="device")
    [result], stats = run, run.stats
    assert result.status == "max_steps" and result.n_steps == 4
    runner_atoms = argon(8)
    runner_atoms.calc = CountingLJ(lj)
    ASELineSearch(runner_atoms, logfile=None).run(fmax=1e-6, steps=4)
    assert stats["structure_evaluations"] == runner_atoms.calc.calls
    np.testing.assert_allclose(result.atoms.positions, runner_atoms.positions, atol=1e-10)


@pytest.mark.parametrize("loop", ["host", "device"])
def test_a_search_that_cannot_start_fails_where_ase_raises(lj, loop):
    """Argon 13 % expanded, cell relaxed: ASE's second direction is not a descent direction and its line search
    raises; here that system fails with ASE's step count and geometry, and the others go on."""
    expanded = bulk("Ar", "fcc", a=6.0, cubic=True) * (2, 2, 1)
    expanded.rattle(0.05, seed=1)
    good = argon(3)
    mine = relax([expanded, good], lj, optimizer="lbfgs-linesearch", fmax=2e-3, max_steps=100, relax_cell=True,
                 progress=False, loop=loop)
    theirs = expanded.copy()
    theirs.calc = CountingLJ(lj)
    runner = ASELineSearch(ExactFrechetCellFilter(theirs), logfile=None)
    with pytest.raises(RuntimeError, match="LineSearch failed"):
        runner.run(fmax=2e-3, steps=100)
    assert mine[0].status == "failed" and "line search failed" in mine[0].message and mine[0].n_steps == runner.nsteps
    np.testing.assert_allclose(mine[0].atoms.positions, theirs.positions, atol=1e-8)
    np.testing.assert_allclose(mine[0].atoms.cell[:], theirs.cell[:], atol=1e-8)
    assert mine[1].status == "converged"
