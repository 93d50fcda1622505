"""The HEO evaluation's annealed section (evaluate --anneal): lowest-energy arrangements of an anneal folder checked
against the structures it started from, and the report's annealed vs random-start table and alpha table computed
from the saved files."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest

from jaxmat.errors import JaxmatInputError
from jaxmat.files import write_frames, write_json
from jaxmat.heo.evaluate import annealed_starts
from jaxmat.heo.generate import rocksalt_heo
from jaxmat.heo.report import write_report


def anneal_folder(path, cells, temperatures=(300.0, 1500.0)):
    """A final.extxyz as python -m jaxmat.heo.anneal writes it: last and lowest per replica, the cations permuted."""
    frames = []
    for k, cell in enumerate(cells):
        for t in temperatures:
            for state, energy in (("last", -1.0), ("lowest", -2.0 - k)):
                atoms = cell.copy()
                sites = np.flatnonzero(atoms.numbers != 8)
                atoms.numbers[sites] = atoms.numbers[np.roll(sites, 1)]
                atoms.info.update(replica=2 * k, input_index=k, temperature=t, state=state, energy=energy)
                frames.append(atoms)
    path.mkdir()
    ase.io.write(path / "final.extxyz", frames)
    return path


def test_annealed_starts_are_the_lowest_arrangements_of_the_given_structures(tmp_path):
    cells = [rocksalt_heo(1, seed=s) for s in range(3)]
    folder = anneal_folder(tmp_path / "anneal", cells)
    starts = annealed_starts(folder, cells, [cells[0], cells[2]])  # cell 1 left out (say, an element a model lacks)
    assert [a.info["substitution_index"] for a in starts] == [0, 0, 1, 1]
    assert [a.info["temperature"] for a in starts] == [300.0, 1500.0] * 2 and starts[2].info["anneal_energy"] == -4.0
    np.testing.assert_array_equal(np.sort(starts[2].numbers), np.sort(cells[2].numbers))
    other = [rocksalt_heo(1, seed=s, a=4.3) for s in range(3)]
    with pytest.raises(JaxmatInputError, match="did not start from structure 0"):
        annealed_starts(folder, other, other)
    with pytest.raises(JaxmatInputError, match="no final.extxyz"):
        annealed_starts(tmp_path, cells, cells)


def test_report_compares_annealed_and_random_starts_and_shows_alpha(tmp_path):
    cells = [rocksalt_heo(1, seed=s) for s in range(2)]
    report = tmp_path / "report"
    finals = []
    for k, cell in enumerate(cells):
        atoms = cell.copy()
        atoms.info.update(status="converged", n_steps=10, model_energy=-40.0 - k)
        finals.append(atoms)
    annealed = []
    for k, t, energy in ((0, 300.0, -40.8), (1, 300.0, -41.4), (0, 1500.0, -39.2), (1, 1500.0, -41.2)):
        atoms = cells[k].copy()
        atoms.info.update(status="converged", n_steps=5, model_energy=energy, temperature=t, substitution_index=k)
        annealed.append(atoms)
    write_frames(report / "substitution" / "m.extxyz", finals)
    write_frames(report / "substitution" / "start.extxyz", cells)
    write_frames(report / "annealed" / "m.extxyz", annealed)
    entry = {"second_half": {"mean": 0.12, "spread": 0.01}, "last": {"mean": 0.1, "spread": 0.02}, "replicas": 2}
    write_json(report / "annealed" / "sro.json", {"cations": ["Mg", "Co"], "alpha": {"Mg-Co": {"300": entry, "1500": entry}}})
    config = {"backend": "jax", "dtype": "float64", "reference": "none",
              "substitution": {"optimizer": "fire", "fmax": 0.05, "max_steps": 100, "relax_cell": True}}
    write_json(report / "evaluation.json", {"models": {"m": "m.model"}, "data": "d", "structures": "s", "anneal": "A", "config": config})
    text = write_report(report).read_text()
    metrics = json.loads((report / "metrics.json").read_text())["annealed"]["m"]
    assert metrics["300"]["lower"] == 2 and metrics["1500"]["lower"] == 1  # per atom: 8 atoms a cell
    np.testing.assert_allclose(metrics["300"]["difference_meV_per_atom"], 1000 * (-0.8 - 0.4) / 2 / 8)
    np.testing.assert_allclose(metrics["1500"]["annealed_eV_per_atom"], (-39.2 - 41.2) / 2 / 8)
    assert "## Annealed vs random starts" in text and "| m | 300 | 2 |" in text and "| Mg-Co | 0.120 ± 0.010 | 0.120 ± 0.010 |" in text
