"""The device relaxation loop: neighbour matrices, rebuilds and re-allocation, failures, MACE, compilations."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.neighbors import list_is_stale, neighbor_matrix, pair_list, slot_shifts
from jaxmat.relax import DeviceLoopOptions, relax


@pytest.fixture(scope="module")
def lj():
    from jaxmat.forcefields.classical import lennard_jones

    return lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)


def _triclinic():
    atoms = Atoms("Ar3", scaled_positions=[[0, 0, 0], [0.4, 0.3, 0.2], [0.7, 0.6, 0.9]],
                  cell=[[4.0, 0.0, 0.0], [1.5, 3.8, 0.0], [0.9, 1.1, 4.2]], pbc=True)
    atoms.rattle(0.02, seed=3)
    return atoms


@pytest.mark.parametrize("name", ["small", "triclinic", "large"])
def test_neighbor_matrix_holds_exactly_vesins_pairs(name, x64):  # the list code called directly, in float64
    """Every (receiver, sender, image) within the cutoff appears once, with the right vector, also for cells
    narrower than twice the cutoff (many images of one neighbour) and skewed cells."""
    from vesin import NeighborList

    atoms = {"small": bulk("Ar", "fcc", a=5.3) * (2, 1, 1), "triclinic": _triclinic(),
             "large": bulk("Ar", "fcc", a=5.3, cubic=True) * (4, 4, 4)}[name]
    atoms.rattle(0.05, seed=1)
    cutoff = 6.0
    batch = batch_from_atoms([atoms])
    matrix = neighbor_matrix(batch, cutoff, len(atoms) + 5)
    i, j, d, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(atoms.positions, atoms.cell[:], True, "ijdS")
    expected = sorted(zip(j.tolist(), i.tolist(), map(tuple, shifts.tolist())))
    rows, cols = np.nonzero(matrix.mask)
    found = sorted(zip(rows.tolist(), matrix.neighbors[rows, cols].tolist(), map(tuple, matrix.translations[rows, cols].tolist())))
    assert found == expected and len(found) > 0
    system_index = np.zeros(matrix.neighbors.shape[0], int)
    shifts_cart = np.asarray(slot_shifts(matrix.translations, atoms.cell[:][None], system_index))
    positions = np.concatenate([atoms.positions, np.zeros((5, 3))])
    vectors = positions[:, None, :] - positions[matrix.neighbors] + shifts_cart
    lengths = np.linalg.norm(vectors[matrix.mask], axis=-1)
    assert sorted(lengths) == pytest.approx(sorted(d), abs=1e-10)
    assert matrix.slots_needed == np.bincount(j).max()
    if name == "small":  # one neighbour is seen through several images
        assert len(set(zip(rows.tolist(), matrix.neighbors[rows, cols].tolist()))) < len(found)
    with pytest.raises(ValueError, match="slots"):
        neighbor_matrix(batch, cutoff, len(atoms) + 1, matrix.slots_needed - 1)


def test_list_is_stale_at_half_the_skin_or_a_cell_change():
    reference = np.zeros((3, 3))
    moved = reference.copy()
    moved[1, 0] = 0.26
    real = np.array([True, True, False])
    assert bool(list_is_stale(moved, reference, real, skin=0.5))
    assert not bool(list_is_stale(moved, reference, real, skin=0.6))
    moved[1, 0], moved[2, 0] = 0.0, 5.0  # a padding row never counts
    assert not bool(list_is_stale(moved, reference, real, skin=0.5))
    cells = np.stack([np.eye(3) * 4.0, np.eye(3)])
    strained = cells.copy()
    strained[0, 0, 0] += 0.1  # images two cells away (reach 3) move by up to 0.3 Å
    running = np.array([True, False])
    stale = lambda c, skin, mask=running: bool(list_is_stale(reference, reference, real, skin, c, cells, np.array([3.0, 3.0]), mask))
    assert stale(strained, 0.25) and not stale(strained, 0.35) and not stale(cells, 0.01)
    assert not stale(strained, 0.25, np.array([False, True]))  # a system that stopped does not count


def test_pair_list_agrees_with_the_pair_potential(lj):
    atoms = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    i, j, t, systems = pair_list(batch_from_atoms([atoms, atoms]), 8.5)
    assert len(i) % 2 == 0 and set(systems.tolist()) == {0, 1} and t.dtype.kind == "i"


@pytest.mark.parametrize("optimizer, allocation", [("fire", "host"), ("lbfgs", "host"), ("fire", "device"), ("lbfgs", "device")])
def test_rebuilds_keep_the_host_loops_steps(lj, optimizer, allocation):
    """A skin of 0.02 Å forces many list rebuilds mid-relaxation; steps and positions stay the host loop's, with
    the lists of refilled systems built, and stale lists rebuilt, by vesin or on the device."""
    structures = []
    for seed in range(3):
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=seed)
        structures.append(atoms)
    host = relax(structures, lj, optimizer=optimizer, fmax=1e-3, max_steps=300, progress=False, loop="host")
    device = relax(structures, lj, optimizer=optimizer, fmax=1e-3, max_steps=300, progress=False, loop="device",
                   max_systems=2, device_loop=DeviceLoopOptions(skin=0.02, allocation=allocation, rebuild=allocation))
    stats = device.stats
    assert [r.n_steps for r in device] == [r.n_steps for r in host]
    assert [r.status for r in device] == ["converged"] * 3
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-10)
        assert a.energy == pytest.approx(b.energy, abs=1e-10)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-10)
    assert stats["rebuilds"] >= 3 and stats["refills"] >= 2 and stats["compilations"] <= 1  # 0: an earlier case compiled it
    assert stats["structure_evaluations"] == sum(r.n_steps + 1 for r in device)


@pytest.mark.parametrize("allocation", ["host", "device"])
def test_neighbour_growth_reallocates_and_matches_the_host_loop(lj, allocation):
    """Eight argon atoms 4.6 Å apart condense: new neighbours come within the list radius, the slot capacity
    grows (a second compiled shape, re-allocated by vesin or on the device) and nothing is dropped."""
    from jaxmat.forcefields.classical import lennard_jones

    short = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=5.0)
    grid = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float) * 4.6 + 5.0
    gas = Atoms("Ar8", positions=grid, cell=[20.0, 20.0, 20.0], pbc=True)
    gas.rattle(0.05, seed=2)
    run = relax([gas], short, optimizer="fire", fmax=1e-3, max_steps=2000, progress=False, loop="device",
                device_loop=DeviceLoopOptions(skin=0.6, allocation=allocation))
    [device], stats = run, run.stats
    [host] = relax([gas], short, optimizer="fire", fmax=1e-3, max_steps=2000, progress=False, loop="host")
    assert device.status == host.status == "converged" and device.n_steps == host.n_steps
    np.testing.assert_allclose(device.atoms.positions, host.atoms.positions, atol=1e-9)
    assert stats["compilations"] == 2 and stats["rebuilds"] >= 1 and stats["reallocations"] >= 1


def test_exploding_system_fails_alone(lj):
    good = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 2, 2)
    good.rattle(0.1, seed=4)
    bad = good.copy()
    bad.positions[1] = bad.positions[0] + [0.6, 0.0, 0.0]  # not overlapping (> 0.5 Å) but forces ~1e6 eV/Å
    device = relax([good, bad, good], lj, optimizer="fire", fmax=1e-3, progress=False, loop="device")
    host = relax([good, bad, good], lj, optimizer="fire", fmax=1e-3, progress=False, loop="host")
    assert [r.status for r in device] == [r.status for r in host] == ["converged", "failed", "converged"]
    assert "exploding forces" in device[1].message and device[1].n_steps == 0
    assert device[0].n_steps == host[0].n_steps


def test_mace_device_loop_equals_host_loop_and_compiles_once():
    import mace  # noqa: F401

    from jaxmat.forcefields.mace.forcefield import MACEJax
    from jaxmat.testing import build_small_mace
    from jaxmat.heo.generate import rocksalt_heo
    from jaxmat.relax.device_loop import compiled_loop
    from jaxmat.relax.optimizers import LBFGS

    force_field = MACEJax.from_torch(build_small_mace([8, 12, 27, 28, 29, 30], seed=1, hidden_irreps="8x0e+8x1o", r_max=4.5,
                                                      scale_shift=(5.0, 0.0)))  # forces of about 1 eV/Å
    cells = [rocksalt_heo(1, seed=s) for s in range(3)] + [rocksalt_heo(2, seed=9)]
    host = relax(cells, force_field, optimizer="lbfgs", fmax=0.05, max_steps=12, progress=False, loop="host")
    device = relax(cells, force_field, optimizer="lbfgs", fmax=0.05, max_steps=12, progress=False, loop="device",
                   max_systems=3, device_loop=DeviceLoopOptions(rebuild="host"))
    stats = device.stats
    assert [r.n_steps for r in device] == [r.n_steps for r in host] == [12] * 4
    assert [r.status for r in device] == [r.status for r in host]
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-8)
        assert a.energy == pytest.approx(b.energy, abs=1e-8)
    # refills compile nothing: a new shape only where a capacity grew. These random-weight cells rearrange (a list
    # rebuild in most steps), so the near list - the pairs within the cutoff now - may outgrow its margin once
    assert stats["compilations"] == 1 + stats["reallocations"] <= 2 and stats["compile_seconds"] > 0 and stats["device_seconds"] > 0
    assert len(compiled_loop(force_field, LBFGS(), None, rebuild_on_device=False).executables) == stats["compilations"]
    again = relax(cells, force_field, optimizer="lbfgs", fmax=0.05, max_steps=12, progress=False, loop="device",
                  max_systems=3, device_loop=DeviceLoopOptions(rebuild="host"))
    again_stats = again.stats
    assert again_stats["compilations"] == 0 and again_stats["compile_seconds"] == 0  # same shapes: nothing compiled
    assert [r.n_steps for r in again] == [r.n_steps for r in device]


def test_device_loop_refuses_what_it_cannot_do(lj):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    with pytest.raises(ValueError, match="device loop"):
        relax([atoms], lj, optimizer="fire", progress=False, loop="device", keep_trajectory=True)
    with pytest.raises(ValueError, match="loop must be"):
        relax([atoms], lj, optimizer="fire", progress=False, loop="gpu")


def test_cli_reuses_the_persistent_compilation_cache(tmp_path):
    """A second `python -m jaxmat.relax` with the same shapes finds every program in the cache (writes none);
    JAXMAT_COMPILATION_CACHE=0 keeps nothing on disk."""
    import os
    import subprocess
    import sys

    import ase.io

    structures = []
    for seed in range(2):
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 1, 1)
        atoms.rattle(0.1, seed=seed)
        structures.append(atoms)
    ase.io.write(tmp_path / "in.extxyz", structures)
    cache = tmp_path / "cache"

    def run(out, cache_setting):
        env = dict(os.environ, JAXMAT_COMPILATION_CACHE=cache_setting, JAX_PLATFORMS="cpu")
        done = subprocess.run([sys.executable, "-m", "jaxmat.relax", str(tmp_path / "in.extxyz"), "--model", "lj:3.4,0.0104,6.0",
                               "--out", str(tmp_path / out), "--optimizer", "lbfgs", "--fmax", "1e-3", "--no-progress"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []

    first = run("a.extxyz", str(cache))
    assert first  # the device loop (and its helpers) were written to the cache
    assert run("b.extxyz", str(cache)) == first  # nothing new compiled
    energies = lambda name: [a.get_potential_energy() for a in ase.io.read(tmp_path / name, index=":")]
    assert energies("a.extxyz") == pytest.approx(energies("b.extxyz"), abs=1e-12)
    cache_off = tmp_path / "unused"
    cache = cache_off
    assert run("c.extxyz", "0") == [] and not cache_off.exists()


@pytest.mark.parametrize("optimizer, allocation", [("fire", "host"), ("lbfgs", "host"), ("lbfgs", "device")])
def test_cell_relaxation_on_the_device_equals_the_host_loop(lj, optimizer, allocation):
    """Cells relaxed through the JAX Fréchet filter: a compressed cell and an expanded one, a small
    triclinic cell, refills (two systems at a time); the expanding/contracting cells change the images in
    reach (list rebuilds) and the neighbour count (slot capacity grows). Same steps, cells and positions
    as the host loop, which runs ASE's FrechetCellFilter."""
    structures = []
    for a, seed in ((5.6, 1), (5.05, 2), (5.3, 3)):
        atoms = bulk("Ar", "fcc", a=a, cubic=True) * (2, 2, 1)
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    structures.append(_triclinic())
    host = relax(structures, lj, optimizer=optimizer, fmax=2e-3, max_steps=600, relax_cell=True, progress=False, loop="host")
    device = relax(structures, lj, optimizer=optimizer, fmax=2e-3, max_steps=600, relax_cell=True, progress=False,
                   loop="device", max_systems=2, device_loop=DeviceLoopOptions(allocation=allocation, rebuild=allocation))
    stats = device.stats
    assert [r.status for r in device] == [r.status for r in host]
    assert [r.n_steps for r in device] == [r.n_steps for r in host]
    for a, b in zip(device, host):
        np.testing.assert_allclose(a.atoms.cell[:], b.atoms.cell[:], atol=1e-8)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-8)
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-10)
        assert a.atoms.get_stress().shape == (6,)
    assert stats["rebuilds"] >= 1 and stats["refills"] >= 2



def test_edge_cases_found_in_review(lj):
    """An isolated atom (no pairs at all), an atom where a padding slot's vector would vanish, bad arguments."""
    lone = Atoms("Ar", positions=[[1.0, 1.0, 1.0]], cell=[20.0, 20.0, 20.0], pbc=True)
    [device] = relax([lone], lj, progress=False, loop="device")
    [host] = relax([lone], lj, progress=False, loop="host")
    assert device.status == host.status == "converged" and device.energy == pytest.approx(host.energy, abs=1e-12)
    shifted = bulk("Ar", "fcc", a=5.3, cubic=True)
    shifted.rattle(0.05, seed=1)
    positions = shifted.positions.copy()
    positions[0] = [-1.0, -1.0, -1.0]
    shifted.positions = positions
    [device] = relax([shifted], lj, fmax=1e-3, progress=False, loop="device")
    [host] = relax([shifted], lj, fmax=1e-3, progress=False, loop="host")
    assert device.status == host.status == "converged" and device.n_steps == host.n_steps
    for bad, word in (({"max_inner": 0}, "max_inner"), ({"skin": -1.0}, "skin"), ({"rebuild": "gpu"}, "rebuild")):
        with pytest.raises(ValueError, match=f"device loop {word} must be"):
            relax([shifted], lj, progress=False, loop="device", device_loop=DeviceLoopOptions(**bad))


def test_the_compiled_loop_does_not_keep_a_pair_potential_alive():
    import gc
    import weakref

    from jaxmat.forcefields.classical import lennard_jones

    potential = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=6.0)
    relax([bulk("Ar", "fcc", a=5.3, cubic=True)], potential, progress=False, loop="device")
    alive = weakref.ref(potential)
    del potential
    gc.collect()
    assert alive() is None


FLOAT32_SCRIPT = """
import sys
from ase.build import bulk
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.relax import DeviceLoopOptions, relax
structures = []
for seed, amount in ((1, 0.05), (2, 0.1)):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(amount, seed=seed)
    structures.append(atoms)
lj = lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
for loop in ("device", "host"):
    results = relax(structures, lj, optimizer="fire", fmax=1e-2, progress=False, float64=False, loop=loop,
                    device_loop=DeviceLoopOptions(max_inner=5))
    print(loop, [(r.status, r.n_steps) for r in results])
"""


def test_float32_device_loop_rebuilds_and_repacks():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FLOAT32_SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["device"] == lines["host"] and "converged" in lines["device"]
