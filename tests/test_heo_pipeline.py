"""The four HEO commands in sequence on the embedded frames (tiny sizes), and the report recomputed from its files."""

from __future__ import annotations

import json
import subprocess
import sys

import mace  # noqa: F401  -- before e3nn
import numpy as np
import pytest

TINY_MACE = ["base.mace.hidden_irreps=8x0e", "base.mace.max_ell=1", "base.mace.correlation=1", "base.mace.max_num_epochs=1",
             "base.mace.r_max=4.0", "base.mace.batch_size=4"]


def _run(*args):
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("heo")
    curated, finetuned, cells, report = root / "curated", root / "finetune", root / "cells.extxyz", root / "report"
    _run("jaxmat.heo.curate", "--source", "embedded:heo", "--out", str(curated), "--limit", "24", "--no-plots")
    overrides = [f"out={finetuned}", f"data.dir={curated}", "base.curated_structures=4", "base.rocksalt_cells=3",
                 "base.rocksalt_repeats=[[1,1,1]]", "finetune.mace.max_num_epochs=1", "data.max_train=8", *TINY_MACE]
    _run("jaxmat.heo.finetune", "--config", "configs/heo_finetune.yaml", "--no-progress", *sum((["--set", o] for o in overrides), []))
    _run("jaxmat.heo.generate", "--n", "1", "--count", "2", "--rattles", "2", "--rattle", "0.08", "--out", str(cells))
    evaluation = ["--set", "in_distribution.count=3", "--set", "in_distribution.max_steps=15", "--set", "substitution.max_steps=15"]
    _run("jaxmat.heo.evaluate", "--config", "configs/heo_eval.yaml", "--models", str(finetuned / "base.model"),
         str(finetuned / "finetuned.model"), "--data", str(curated), "--structures", str(cells), "--out", str(report), *evaluation)
    return {"root": root, "curated": curated, "finetune": finetuned, "cells": cells, "report": report, "evaluation": evaluation}


def test_finetune_stage_outputs(pipeline):
    import torch
    import yaml

    out = pipeline["finetune"]
    for name in ("base.model", "finetuned.model", "loss_base.png", "loss_finetune.png", "summary.json",
                 "finetune/mace_config.yaml", "finetune/train.log", "base/train.extxyz"):
        assert (out / name).exists(), name
    options = yaml.safe_load((out / "finetune" / "mace_config.yaml").read_text())
    assert options["foundation_model"] == str(out / "base.model")
    assert (options["energy_key"], options["forces_key"], options["lr"], options["forces_weight"]) == ("DFT_energy", "DFT_forces", 1e-4, 10.0)
    base = torch.load(out / "base.model", weights_only=False)
    tuned = torch.load(out / "finetuned.model", weights_only=False)
    assert base.atomic_numbers.tolist() == tuned.atomic_numbers.tolist()  # every foundation element kept
    curated_numbers = set()
    import ase.io
    for split in ("train", "val"):
        curated_numbers |= {int(z) for a in ase.io.read(pipeline["curated"] / f"{split}.extxyz", index=":") for z in a.numbers}
    assert curated_numbers <= set(base.atomic_numbers.tolist())
    labelled = ase.io.read(out / "base" / "train.extxyz", index=":")
    assert all("REF_energy" in a.info and a.arrays["REF_forces"].shape == (len(a), 3) for a in labelled)
    changed = [not torch.equal(p, q) for p, q in zip(base.parameters(), tuned.parameters()) if p.shape == q.shape]
    assert any(changed)  # finetuning moved the weights
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["train"] == 8


def test_finetune_rerun_skips_finished_stages(pipeline):
    out = pipeline["finetune"]
    before = (out / "finetuned.model").stat().st_mtime_ns, (out / "base.model").stat().st_mtime_ns
    _run("jaxmat.heo.finetune", "--config", "configs/heo_finetune.yaml", "--no-progress", "--set", f"out={out}",
         "--set", f"data.dir={pipeline['curated']}", "--set", "data.max_train=8")
    assert ((out / "finetuned.model").stat().st_mtime_ns, (out / "base.model").stat().st_mtime_ns) == before


def test_report_numbers_are_recomputed_from_saved_outputs(pipeline):
    import ase.io
    from ase.geometry import find_mic

    report = pipeline["report"]
    metrics = json.loads((report / "metrics.json").read_text())
    text = (report / "report.md").read_text()
    for label in ("base", "finetuned"):
        frames = ase.io.read(report / "test" / f"{label}.extxyz", index=":")
        force_error = np.concatenate([(a.arrays["pred_forces"] - a.arrays["DFT_forces"]).ravel() for a in frames])
        energy_error = np.array([(a.info["pred_energy"] - a.info["DFT_energy"]) / len(a) for a in frames])
        assert metrics["test"][label]["force_rmse_meV_per_A"] == pytest.approx(1000 * np.sqrt(np.mean(force_error**2)))
        assert metrics["test"][label]["energy_rmse_meV_per_atom"] == pytest.approx(1000 * np.sqrt(np.mean(energy_error**2)))
        assert f"| {label} | {len(frames)} | {metrics['test'][label]['energy_rmse_meV_per_atom']:.1f} |" in text

        relaxed = ase.io.read(report / "in_distribution" / f"{label}.extxyz", index=":")
        rmsd = []
        for a in relaxed:  # independent minimum-image RMSD with ASE
            d, _ = find_mic(a.positions - a.arrays["dft_positions"], a.cell, pbc=True)
            d -= d.mean(axis=0)
            rmsd.append(np.sqrt(np.mean(np.sum(d**2, axis=1))))
        assert metrics["in_distribution"][label]["rmsd_mean_A"] == pytest.approx(np.mean(rmsd))
        assert metrics["in_distribution"][label]["converged"] == sum(a.info["status"] == "converged" for a in relaxed)

        cells = ase.io.read(report / "substitution" / f"{label}.extxyz", index=":")
        assert len(cells) == 4 and all(a.info["n_steps"] <= 15 for a in cells)
        ratio = np.mean([a.info["status"] == "converged" for a in cells])
        assert metrics["substitution"][label]["convergence_ratio"] == pytest.approx(ratio)
        reference = np.mean([a.info["reference_energy"] / len(a) for a in cells])
        assert metrics["substitution"][label]["reference_energy_final_mean_eV_per_atom"] == pytest.approx(reference)
        traces = json.loads((report / "substitution" / f"{label}_traces.json").read_text())["energies_eV"]
        assert [len(t) for t in traces] == [a.info["n_steps"] + 1 for a in cells]
        assert all(t[-1] == pytest.approx(a.info["model_energy"]) for t, a in zip(traces, cells))
    for plot in ("parity.png", "steps_histogram.png", "energy_traces.png"):
        assert (report / plot).exists()

    (report / "metrics.json").unlink()
    (report / "report.md").unlink()
    _run("jaxmat.heo.report", str(report))
    assert json.loads((report / "metrics.json").read_text()) == metrics
    assert (report / "report.md").read_text() == text


def test_evaluate_rerun_reuses_saved_relaxations(pipeline):
    report = pipeline["report"]
    saved = {p: p.stat().st_mtime_ns for p in report.glob("*/*.extxyz")}
    finetuned = pipeline["finetune"]
    _run("jaxmat.heo.evaluate", "--config", "configs/heo_eval.yaml", "--models", str(finetuned / "base.model"),
         str(finetuned / "finetuned.model"), "--data", str(pipeline["curated"]), "--structures", str(pipeline["cells"]),
         "--out", str(report), *pipeline["evaluation"])
    assert {p: p.stat().st_mtime_ns for p in report.glob("*/*.extxyz")} == saved


def test_evaluate_refuses_a_model_lacking_an_element_when_strict(pipeline, tmp_path):
    import torch

    from jaxmat.testing import build_small_mace

    model = tmp_path / "mgo.model"
    torch.save(build_small_mace([8, 12]), model)
    result = subprocess.run([sys.executable, "-m", "jaxmat.heo.evaluate", "--models", str(model), "--data", str(pipeline["curated"]),
                             "--out", str(tmp_path / "r"), "--set", "unsupported=error"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "lack elements" in result.stderr and "mgo" in result.stderr
    assert not (tmp_path / "r" / "test").exists()
