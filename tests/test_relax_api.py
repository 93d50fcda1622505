"""The public relax API: keyword-only calls, optimizer options, returned statistics, single-point evaluation, ASE
filters refused, ASE calculators as force fields, and the host loop's failure rule (memory, numerical, bugs)."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE as ASEFIRE

from cells import rattled_argon
from jaxmat.errors import ConfigError, ForceFieldError, JaxmatInputError, StructureError
from jaxmat.forcefields.ase_adapter import CalculatorForceField
from jaxmat.forcefields.base import ForceFieldOutput, batch_from_atoms
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.precision import float64_scope
from jaxmat.relax import FIRE, evaluate, relax
from jaxmat.relax.evaluation import failure_kind

EMT_NUMBERS = (13, 29, 47, 79, 28, 46, 78, 1, 6, 7, 8)


@pytest.fixture(scope="module")
def lj():
    return lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)


def copper(seed, repeat=(2, 2, 2), strain=1.0):
    atoms = bulk("Cu", "fcc", a=3.6 * strain, cubic=True) * repeat
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_settings_are_keyword_only(lj):
    with pytest.raises(TypeError, match="positional"):
        relax([rattled_argon(0)], lj, "fire", progress=False)


def test_optimizer_options_reach_the_optimizer(lj):
    structures = [rattled_argon(1)]
    by_name = relax(structures, lj, optimizer="fire", optimizer_options={"max_step": 0.05, "dt_max": 0.5}, fmax=1e-3,
                    progress=False, loop="host")
    by_instance = relax(structures, lj, optimizer=FIRE(max_step=0.05, dt_max=0.5), fmax=1e-3, progress=False, loop="host")
    default = relax(structures, lj, optimizer="fire", fmax=1e-3, progress=False, loop="host")
    assert by_name[0].n_steps == by_instance[0].n_steps != default[0].n_steps
    np.testing.assert_array_equal(by_name[0].atoms.positions, by_instance[0].atoms.positions)
    with pytest.raises(ConfigError, match="no option 'dtmax'.*dt_max"):
        relax(structures, lj, optimizer="fire", optimizer_options={"dtmax": 0.5}, progress=False)
    with pytest.raises(ConfigError, match="already built"):
        relax(structures, lj, optimizer=FIRE(), optimizer_options={"dt_max": 0.5}, progress=False)


def test_statistics_come_back_with_the_results(lj):
    results = relax([rattled_argon(2), rattled_argon(3)], lj, fmax=1e-3, progress=False, loop="host")
    assert isinstance(results, list) and len(results) == 2
    assert results.stats["structure_evaluations"] == sum(r.n_steps + 1 for r in results)
    assert results.stats["total_seconds"] >= results.stats["force_seconds"] > 0


def test_single_point_matches_the_force_field_and_ase(lj):
    """evaluate(): energies, forces, Voigt stress as ASE's get_stress; a broken structure fails alone."""
    periodic = [copper(0), copper(1, strain=1.02)]
    molecule = copper(2, repeat=(1, 1, 1))
    molecule.pbc, molecule.cell = False, None
    overlapping = copper(3)
    overlapping.positions[1] = overlapping.positions[0] + 0.1
    results = evaluate(periodic + [molecule, overlapping], CalculatorForceField(EMT(), supported_numbers=EMT_NUMBERS))
    assert [r.status for r in results] == ["evaluated"] * 3 + ["failed"] and "overlap" in results[3].message
    for result, atoms in zip(results[:3], periodic + [molecule]):
        reference = atoms.copy()
        reference.calc = EMT()
        assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(result.forces, reference.get_forces(), atol=1e-12)
        if all(atoms.pbc):
            np.testing.assert_allclose(result.voigt_stress, reference.get_stress(), atol=1e-12)
            np.testing.assert_allclose(result.atoms.get_stress(), reference.get_stress(), atol=1e-12)
            np.testing.assert_allclose(result.stress, reference.get_stress(voigt=False), atol=1e-12)
    assert results[2].stress is None  # not periodic: no stress by default
    [direct] = evaluate([rattled_argon(4)], lj, compute_stress=True)
    with float64_scope():  # evaluate() computes in float64 by default
        out = lj(batch_from_atoms([rattled_argon(4)]), compute_stress=True)
    assert direct.energy == pytest.approx(float(out.energy[0]), abs=1e-12)
    np.testing.assert_allclose(direct.stress, np.asarray(out.stress[0]), atol=1e-14)


def test_ase_filters_and_other_objects_are_refused_by_name(lj):
    atoms = rattled_argon(5)
    for call in (relax, evaluate):
        with pytest.raises(StructureError, match="structure 1 is an ASE FrechetCellFilter.*relax_cell=True"):
            call([atoms, FrechetCellFilter(atoms.copy())], lj)
        with pytest.raises(StructureError, match="my cell is a str"):
            call(["Ar.cif"], lj, names=["my cell"])


def test_an_ase_calculator_relaxes_in_the_batched_host_loop():
    """EMT through CalculatorForceField: ASE's FIRE steps and minima, several cells in one batch."""
    structures = [copper(seed) for seed in range(3)]
    force_field = CalculatorForceField(make_calculator=EMT, supported_numbers=EMT_NUMBERS)
    results = relax(structures, force_field, optimizer="fire", fmax=1e-3, max_steps=500, progress=False)
    for result, start in zip(results, structures):
        theirs = start.copy()
        theirs.calc = EMT()
        runner = ASEFIRE(theirs, logfile=None)
        runner.run(fmax=1e-3, steps=500)
        assert result.status == "converged" and result.n_steps == runner.nsteps
        np.testing.assert_allclose(result.atoms.positions, theirs.positions, atol=1e-8)
        assert result.energy == pytest.approx(theirs.get_potential_energy(), abs=1e-10)
    with pytest.raises(JaxmatInputError, match="contains Fe"):
        relax([bulk("Fe", "bcc", a=2.87)], force_field, progress=False)


class OutOfMemoryError(RuntimeError):
    """Named as torch.cuda's is."""


class Limited:
    """Lennard-Jones that runs out of memory on batches of more than ``most`` systems (torch's error class name)."""

    supported_numbers = None

    def __init__(self, inner, most):
        self.inner, self.most, self.sizes = inner, most, []

    def __call__(self, batch, compute_stress=False):
        self.sizes.append(batch.n_systems)
        if batch.n_systems > self.most:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = self.inner(batch, compute_stress)
        return ForceFieldOutput(np.asarray(out.energy), np.asarray(out.forces), out.stress)


def test_out_of_memory_halves_the_batch_and_loses_nothing(lj):
    structures = [rattled_argon(seed) for seed in range(5)]
    plain = relax(structures, lj, optimizer="lbfgs", fmax=1e-3, progress=False, loop="host")
    limited = Limited(lj, most=2)
    results = relax(structures, limited, optimizer="lbfgs", fmax=1e-3, progress=False, loop="host")
    assert results.stats["memory_halvings"] >= 1 and max(limited.sizes[1:]) <= 2
    assert [r.n_steps for r in results] == [r.n_steps for r in plain] and {r.status for r in results} == {"converged"}
    for a, b in zip(results, plain):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-12)


def test_failures_are_classified():
    class XlaRuntimeError(RuntimeError):
        pass

    assert failure_kind(MemoryError()) == "memory"
    assert failure_kind(OutOfMemoryError("CUDA out of memory")) == "memory"
    assert failure_kind(XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")) == "memory"
    assert failure_kind(FloatingPointError("overflow")) == "numerical"
    assert failure_kind(np.linalg.LinAlgError("singular")) == "numerical"
    assert failure_kind(KeyError("species")) == failure_kind(RuntimeError("bug")) == "other"


class Misshapen:
    """Lennard-Jones whose forces carry one padding row too many."""

    supported_numbers = None

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, batch, compute_stress=False):
        out = self.inner(batch, compute_stress)
        return ForceFieldOutput(np.asarray(out.energy), np.concatenate([np.asarray(out.forces), np.zeros((1, 3))]), out.stress)


def test_misshapen_force_field_output_is_an_error_naming_the_structures(lj):
    for call in (relax, evaluate):
        with pytest.raises(ForceFieldError, match=r"forces of shape \(33, 3\), not \(32, 3\).*for a, b"):
            call([rattled_argon(0, repeat=(2, 2, 1)), rattled_argon(1, repeat=(2, 2, 1))], Misshapen(lj), names=["a", "b"])


def test_max_atoms_is_kept_exactly_and_one_structure_is_a_list_of_one(lj):
    counted = Limited(lj, most=100)
    singles = [rattled_argon(seed, repeat=(1, 1, 1)) for seed in range(6)]  # 4 atoms each
    evaluate(singles, counted, max_atoms=8)
    assert counted.sizes == [2, 2, 2]
    counted.sizes.clear()
    relax(singles, counted, max_atoms=8, max_steps=1, progress=False, loop="host")
    assert max(counted.sizes) == 2
    [one] = relax(rattled_argon(2), lj, fmax=1e-3, progress=False)
    assert one.status == "converged"
    with pytest.raises(JaxmatInputError, match="names has 1 entries for 2 structures"):
        evaluate(singles[:2], lj, names=["only one"])
