"""The GPU benchmark harness (benchmarks/gpu) at toy sizes on CPU: the same code the device runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "benchmarks/gpu"
sys.path.insert(0, str(HARNESS))

import harness  # noqa: E402


def _smoke_env(**extra):
    env = dict(os.environ, JAXMAT_GPU_SMOKE="1", PYTHON=sys.executable, JAXMAT_GPU_WHEELS="")  # this Python as it is
    env.update(extra)
    return env


@pytest.mark.slow
def test_smoke_run_measures_every_kind_of_unit(tmp_path):
    out = tmp_path / "gpu"
    model = harness.find_model()
    profile_name = f"profile-{'small' if model else 'random-small'}-float64"  # without ../shared: the relaxations' random model
    cases = ("forces-small-float64," if model else "") + f"forces-medium-float64,{profile_name},relax-W3-lbfgs,precision,polysrl"
    done = subprocess.run(["bash", str(HARNESS / "run.sh"), str(out)], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=_smoke_env(JAXMAT_GPU_BUDGET="600", JAXMAT_GPU_CASES=cases))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    units = record["units"]
    assert record["smoke"] is True
    for name, entry in units.items():  # a peer that is not installed is reported, nothing else may fail
        assert entry["status"] == "ok" or (entry["status"] == "unavailable" and ("torch-sim" in name or "cueq" in name)), (name, entry)
    assert units["env"]["result"]["torch_device"] in ("cpu", "cuda")
    # parity: the JAX MACE and mace-torch on the same structures, float64
    parity = [r for r in record["parity"] if r["dtype"] == "float64" and r["comparison"] == "jaxmat-jax vs mace-torch"]
    assert parity and all(r["max_abs_energy_per_atom_eV"] < 1e-6 and r["max_abs_force_eV_per_A"] < 1e-5 for r in parity)
    for name in ("forces-small-float64-mace-torch", "forces-small-float64-jaxmat-jax"):
        if name in units:
            timing = units[name]["result"]["workloads"]["W1"]
            assert timing["call_s"] and timing["model_s"] and timing["atoms"] == 16 and timing["edges"] > 0
    # the JAX MACE stage by stage: the first stages of the call compiled alone and timed, the rest traced
    profile = units[profile_name]["result"]
    stages = profile["stages"]
    assert [r["stage"] for r in stages] == ["edge vectors (position gather)", "lengths + spherical harmonics",
                                            "radial basis + MLPs (all layers)", "L0 linear_up + neighbour gather", "L0 edge TP + neighbour sum"]
    for row in stages:
        assert len(row["fwd_s"]) == len(row["fwd_bwd_s"]) == 1 and min(row["fwd_s"] + row["fwd_bwd_s"]) > 0, row
        assert row["compile_fwd_s"] > 0 and (row["compile_fwd_bwd_s"] > 0) == row["differentiated"], row
    assert [r["differentiated"] for r in stages] == [True, True, True, False, True]  # the embedding does not move
    assert sum(r["fwd_bwd_flops"] for r in stages) > 0 and sum(r["fwd_bwd_bytes"] for r in stages) > 0
    assert {"L1 edge TP + neighbour sum", "L1 symmetric contraction", "readouts"} <= set(profile["traced_only"])
    assert len(stages) + len(profile["traced_only"]) == 14 and "stopped" not in profile
    assert profile["workload"] == "W1" and profile["atoms"] == 16 and profile["edges"] > 0
    assert min(profile["call"]["call_s"]) > 0 and profile["call"]["compile_s"] > 0 and profile["call"]["flops"] > 0
    assert profile["blocked_call"]["block"] == 64 and min(profile["blocked_call"]["call_s"]) > 0  # the blocked product basis too
    # float32 stage by stage against float64 on the float64 stage's inputs: on a CPU every stage is float32 rounding
    precision = units["precision-float32-default"]["result"]
    assert [r["stage"] for r in precision["stages"]] == ([r["stage"] for r in stages] + profile["traced_only"])[:7]  # smoke: 7
    assert all(r["forward"] < 1e-5 and (r["backward"] is None or r["backward"] < 1e-5) for r in precision["stages"])
    assert sum(r["forward"] > 0 for r in precision["stages"]) >= 6  # compared in float32, not float64 against itself
    assert precision["energy_per_atom_error"] < 1e-5 and precision["force_error"] < 1e-4 and precision["atoms"] == 16
    # relaxation: jaxmat takes ASE's steps and ends at ASE's energies
    jax_relax = units["relax-W3-lbfgs-jaxmat-jax"]["result"]
    ase_relax = units["relax-W3-lbfgs-ase"]["result"]
    assert jax_relax["steps"][: len(ase_relax["steps"])] == ase_relax["steps"]
    assert jax_relax["structures"] == 3 and jax_relax["cold_seconds"] > 0 and jax_relax["compiled_shapes"] >= 1
    agreement = {row["contender"]: row for row in record["relax_agreement"] if row["workload"] == "W3"}
    assert agreement["ase"]["max_abs_dE_eV"] < 1e-6 and agreement["jaxmat-torch"]["max_abs_dE_eV"] < 1e-6
    polysrl = units["polysrl"]["result"]
    assert len(polysrl["jax_step_s"]) == 2 and polysrl["jax_loss"] > 0
    try:
        import torch_geometric  # noqa: F401  (the bench extra: the PyTorch contender runs too)
    except ImportError:
        assert "torch-geometric" in polysrl["torch_unavailable"]
    else:
        assert polysrl["loss_rel_diff"] < 1e-4 and len(polysrl["torch_step_s"]) == 2
    text = (out / "results.md").read_text()
    assert "## Parity" in text and "relax-W3-lbfgs-jaxmat-jax" in text and "SMOKE RUN" in text
    assert "## Where the JAX MACE's time goes" in text and "| L0 edge TP + neighbour sum |" in text and "| whole call |" in text
    assert "## Where float32 loses accuracy" in text and "| L0 symmetric contraction | " in text
    assert "in blocks of 64 monomials (`MACEJax(contraction_block=64)`)" in text
    assert (out / "results.png").stat().st_size > 1000 and (out / "harness.log").exists()


def test_units_past_the_budget_are_skipped_and_finished_units_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMAT_GPU_SMOKE", "1")
    out = tmp_path / "gpu"
    assert harness.main(["--out", str(out), "--budget", "0"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["units"] and all(e["status"] == "skipped" and "budget" in e["note"] for e in record["units"].values())
    assert "| polysrl | skipped |" in (out / "results.md").read_text()
    # a finished unit survives a later call into the same folder (the second device call completes the plan)
    record["units"]["polysrl"] = {"status": "ok", "kind": "polysrl", "spec": {}, "wall_s": 1.0,
                                  "result": {"batch_size": 8, "atoms": 60, "jax_step_s": [0.1], "torch_step_s": [0.2], "loss_rel_diff": 1e-8}}
    (out / "results.json").write_text(json.dumps(record))
    assert harness.main(["--out", str(out), "--budget", "0"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["units"]["polysrl"]["status"] == "ok" and again["units"]["env"]["status"] == "skipped"
    assert "| 8 | 60 | 0.1000 | 0.2000 | 2.00x |" in (out / "results.md").read_text()
    assert harness.main(["--out", str(out), "--budget", "0", "--fresh"]) == 0
    assert json.loads((out / "results.json").read_text())["units"]["polysrl"]["status"] == "skipped"


def test_a_unit_over_its_limit_is_killed_and_reported(tmp_path):
    unit = {"name": "env", "kind": "env", "spec": {"smoke": True}}
    with open(tmp_path / "log.txt", "w") as log:
        entry = harness.run_unit(unit, tmp_path, timeout=0.3, log=log)  # importing jax and torch takes longer
    assert entry["status"] == "timeout" and "killed" in entry["note"]
    assert not (tmp_path / "env.json").exists()


def test_unknown_case_prefix_is_named(monkeypatch):
    monkeypatch.setenv("JAXMAT_GPU_SMOKE", "1")
    with pytest.raises(SystemExit, match="relax-W9"):
        harness.main(["--out", "unused", "--cases", "relax-W9"])


def test_plan_order_and_sizes():
    plan = harness.build_plan(smoke=False, model="model.file")
    names = [u["name"] for u in plan]
    assert names[0] == "env" and names[1:5] == ["forces-small-float64-mace-torch", "forces-small-float64-jaxmat-jax",
                                                "forces-small-float64-mace-torch-cueq", "profile-small-float64"]
    assert names.index("forces-small-float32-jaxmat-jax") < names.index("profile-small-float32") < names.index("polysrl")
    precision = [u for u in plan if u["kind"] == "precision"]  # the float32 diagnosis: default, TF32 off, Triton GEMMs off
    assert [u["spec"]["env"] for u in precision] == [{}, {"NVIDIA_TF32_OVERRIDE": "0"}, {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}]
    assert names.index("profile-small-float32") < names.index(precision[0]["name"]) < names.index("polysrl")
    profiles = [u for u in plan if u["kind"] == "profile"]
    assert all(u["spec"]["workload"] == "W3" and u["spec"]["repeats"] == 3 and u["cap_s"] <= 120 for u in profiles)
    assert all(u["spec"]["max_stages"] is None for u in profiles)  # every stage measured on the device
    smoke_profiles = [u for u in harness.build_plan(smoke=True, model=None) if u["kind"] == "profile"]
    assert [(u["name"], u["spec"]["workload"], u["spec"]["max_stages"]) for u in smoke_profiles] == [
        ("profile-random-small-float64", "W1", 5), ("profile-random-small-float32", "W1", 5)]
    assert names.index("relax-W3-lbfgs-jaxmat-jax") < names.index("forces-small-float32-jaxmat-jax") < names.index("polysrl")
    relax = [u for u in plan if u["kind"] == "relax"]
    assert {u["spec"]["workload"] for u in relax} == {"W3", "W4"} and all(u["spec"]["max_steps"] == 300 for u in relax)
    assert not any(u["spec"]["smoke"] for u in plan)
    # without the shared model there is no relaxation on the real device run, and the medium shape stands in
    bare = harness.build_plan(smoke=False, model=None)
    assert not any(u["kind"] == "relax" for u in bare) and bare[1]["spec"]["model"] == "medium"


def test_workloads_have_the_documented_sizes():
    from jaxmat.testing import workload

    w3, w4 = workload("W3"), workload("W4")
    assert [len(a) for a in w3] == [64] * 256 and [len(a) for a in w4] == [512] * 32
    assert not np.allclose(w3[0].positions, w3[1].positions)


def test_cuequivariance_peers_are_planned_and_reported_unavailable_without_the_package(monkeypatch):
    """mace-torch with cuEquivariance and torch-sim's MaceModel(enable_cueq=True) beside the plain peers; where the
    package is missing the harness says so without starting the unit's process."""
    import importlib.util

    names = [unit["name"] for unit in harness.build_plan(smoke=False, model="m.model")]
    assert "forces-small-float32-mace-torch-cueq" in names and "relax-W3-lbfgs-torch-sim-cueq" in names
    plain = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cuequivariance_torch" else plain(name, *a))
    cueq = {"name": "forces-small-float32-mace-torch-cueq", "spec": {"contender": "mace-torch-cueq"}}
    assert harness.missing_peer(cueq) == "cuequivariance_torch not installed"
    assert harness.missing_peer({"name": "forces-small-float32-jaxmat-jax", "spec": {"contender": "jaxmat-jax"}}) is None
