"""Constant pressure in jaxmat.heo.langevin (ASE's NPTBerendsen cell scaling before every Langevin step): LJ argon
started compressed or stretched reaches, at 0.5 K and zero pressure, the volume of the 0 K cell relaxation (ASE's FIRE
with FrechetCellFilter on the same potential); a positive pressure gives a smaller volume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.build import bulk

from jaxmat.forcefields.base import ase_calculator
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.heo import langevin

LJ = dict(sigma=3.4, epsilon=0.0104, cutoff=7.0)  # argon, eV and Å


def relaxed_volume(model):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)
    atoms.calc = ase_calculator(model)
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4, steps=500)
    return atoms.get_volume()


def test_zero_pressure_volume_is_the_relaxed_one_and_pressure_compresses(x64):
    model = lennard_jones(**LJ)
    params, evaluate = model.device_model()
    cells = [bulk("Ar", "fcc", a=a, cubic=True) * (2, 2, 2) for a in (5.1, 5.45, 5.26)]
    n = sum(len(a) for a in cells)
    index = np.concatenate([np.full(len(a), k) for k, a in enumerate(cells)] + [[len(cells)]]).astype(np.int32)
    positions = np.concatenate([a.positions for a in cells] + [np.zeros((1, 3))])
    cell_array = np.concatenate([np.stack([a.cell[:] for a in cells]), np.eye(3)[None]])
    pbc = np.ones((len(cells) + 1, 3), bool)
    masses = np.concatenate([a.get_masses() for a in cells] + [[1.0]])
    graph = langevin.md_graph(positions, cell_array, pbc, index, np.zeros(n + 1, np.int32), np.arange(n + 1) < n, model.cutoff, 1.0)
    keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.PRNGKey(0), k))(jnp.arange(len(cells) + 1))
    state = langevin.init_state(evaluate, params, graph, np.zeros_like(positions), keys, model.cutoff)
    gpa = units.GPa
    pressure = np.array([0.0, 0.0, 0.5 * gpa, 0.0])  # eV/Å^3
    volumes = []
    for _ in range(4):
        state, graph = langevin.run(evaluate, params, graph, state, 100, dt=5 * units.fs, kT=np.full(4, units.kB * 0.5),
                                    friction=np.full(4, 0.02 / units.fs), masses=masses, pbc=pbc, cutoff=model.cutoff,
                                    pressure=pressure, taup=200 * units.fs, compressibility=1.0 / (3.0 * gpa))
        volumes.append(np.abs(np.linalg.det(np.asarray(state["cells"])[:3])))
    reference = relaxed_volume(model)
    np.testing.assert_allclose(volumes[-1][:2], reference, rtol=2e-3)  # from both sides (at 5 K it is 0.6 % larger: thermal expansion)
    assert abs(volumes[-1][0] - volumes[-2][0]) < 2e-3 * reference  # settled
    assert volumes[-1][2] < 0.97 * reference  # 0.5 GPa on a solid of bulk modulus ~3 GPa
    for cell in np.asarray(state["cells"])[:3]:
        np.testing.assert_allclose(cell, cell[0, 0] * np.eye(3), atol=1e-9)  # isotropic: stays cubic
