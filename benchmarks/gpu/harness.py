"""The GPU benchmark: jaxmat against its peers on one accelerator, inside a hard time budget.

    python benchmarks/gpu/harness.py --out OUTDIR [--budget 420] [--cases forces-small,relax-W3,...]

Normally started by ``benchmarks/gpu/run.sh OUTDIR`` (which installs the carried wheels first).
``JAXMAT_GPU_SMOKE=1`` runs the same units at toy sizes (on CPU here and in CI).

Each unit (units.py) runs in its own process, so one that fails, runs out of memory or overruns its time
costs only itself; the rest of the plan goes on. Units run in order of value; a unit is skipped, with a
note, once the budget left is below what it needs. After every unit OUTDIR/results.json (raw numbers),
OUTDIR/results.md (tables) and OUTDIR/results.png (speed-ups) are rewritten, so a run cut short still
returns what it finished; OUTDIR/harness.log holds every unit's output, OUTDIR/units/ each unit's raw
result and arrays. Rerunning into the same OUTDIR keeps the units that finished and runs the others
(``--fresh`` starts over), so a second call on the same machine completes a plan the first could not.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def smoke_mode() -> bool:
    return os.environ.get("JAXMAT_GPU_SMOKE", "") not in ("", "0")


def find_model() -> str | None:
    """The shared small HEO MACE: $JAXMAT_GPU_MODEL, the carried copy (.whl/models/) or ../shared/models/."""
    candidates = [os.environ.get("JAXMAT_GPU_MODEL"), ROOT / ".whl/models/mace_heo_chgnet_small.model",
                  ROOT.parent / "shared/models/mace_heo_chgnet_small.model"]
    for path in candidates:
        if path and Path(path).is_file():
            return str(path)
    return None


def build_plan(smoke: bool, model: str | None) -> list[dict]:
    """Units in order of value: name, kind, spec, min_s (skip below this budget left), cap_s (its own limit).

    Parity and force calls of the shared model in float64 first, then the JAX MACE's per-stage profile
    (where its GPU time goes), the headline relaxations (W3, W4; L-BFGS, then FIRE), float32 force calls,
    profile and per-stage float32 error (``precision-*``), the MACE-MP-0 medium shape, the MPA-0 and MH-1 shapes,
    and the PolySRL train step.
    """
    repeats = 1 if smoke else 3
    workloads = ["W1"] if smoke else ["W1", "W3", "W4"]
    small = model or "medium"  # without the shared model the medium shape stands in, named as such
    small_name = "small" if model else "medium"
    relax_model = model or ("random-small" if smoke else None)  # smoke without ../shared: a random small MACE

    def forces(model_spec, name, dtype):
        return [{"name": f"forces-{name}-{dtype}-{contender}", "kind": "forces", "min_s": 20 if name == "small" else 40,
                 "cap_s": 150 if name == "small" else 200,
                 "spec": {"model": model_spec, "dtype": dtype, "contender": contender, "workloads": workloads, "repeats": repeats}}
                for contender in ("mace-torch", "jaxmat-jax", "mace-torch-cueq")]

    def profile(dtype):
        # W3 (16,384 atoms, ~1M edges) with the shared model: ~15 stages, two compilations each, on the GPU about
        # a minute; the medium shape standing in is far larger, so W1. Smoke (CI, near its time limit): W1 at toy
        # size with the relaxations' model, the first 5 stages measured and the rest only traced.
        model_spec = model or ("random-small" if smoke else "medium")
        name = "small" if model else ("random-small" if smoke else "medium")
        spec = {"model": model_spec, "dtype": dtype, "workload": "W3" if model and not smoke else "W1", "repeats": repeats,
                "max_stages": 5 if smoke else None, "contraction_block": 64}
        return [{"name": f"profile-{name}-{dtype}", "kind": "profile", "min_s": 60, "cap_s": 120, "spec": spec}]

    def precision():
        # float32 on the GPU was 1e-3 eV/atom from float64 although every dot carries precision HIGHEST (2026-11-26): the
        # stage that loses it, by default and with TensorFloat-32 switched off at the CUDA level / Triton GEMMs off
        model_spec = model or ("random-small" if smoke else "medium")
        variants = [("default", {})] + ([] if smoke else [("tf32-override-off", {"NVIDIA_TF32_OVERRIDE": "0"}),
                                                         ("no-triton-gemm", {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"})])
        return [{"name": f"precision-float32-{variant}", "kind": "precision", "min_s": 20, "cap_s": 90,
                 "spec": {"model": model_spec, "dtype": "float32", "workload": "W1", "variant": variant, "env": env,
                          "max_stages": 7 if smoke else None}}
                for variant, env in variants]

    def relaxations(workload, optimizer):
        if not relax_model:
            return []
        contenders = ["jaxmat-jax", "torch-sim", "torch-sim-cueq", "ase"] + (["jaxmat-torch"] if optimizer == "lbfgs" else [])
        return [{"name": f"relax-{workload}-{optimizer}-{contender}", "kind": "relax", "min_s": 25, "cap_s": 180,
                 "spec": {"workload": workload, "optimizer": optimizer, "contender": contender, "model": relax_model,
                          "fmax": 0.05, "max_steps": 5 if smoke else 300, "ase_structures": 1 if smoke else 4}}
                for contender in contenders]

    plan = [{"name": "env", "kind": "env", "spec": {}, "min_s": 5, "cap_s": 60}]
    plan += forces(small, small_name, "float64") + profile("float64")
    plan += relaxations("W3", "lbfgs") + relaxations("W4", "lbfgs") + relaxations("W3", "fire") + relaxations("W4", "fire")
    if relax_model:  # HEO swap Monte Carlo and Langevin MD against torch-sim's (W3: 256 replicas of 64 atoms)
        plan.append({"name": "anneal-W3", "kind": "anneal", "min_s": 60, "cap_s": 240,
                     "spec": {"workload": "W1" if smoke else "W3", "model": relax_model}})
    plan += forces(small, small_name, "float32") + profile("float32") + precision()
    if not smoke:  # the JAX MACE's float32 model with float64 geometry and sums; its speed peer is mace-torch float32
        plan += [unit for unit in forces(small, small_name, "mixed") if unit["spec"]["contender"] == "jaxmat-jax"]
    if model:
        plan += forces("medium", "medium", "float32") + forces("medium", "medium", "float64")
    if not smoke:  # the foundation families' shapes (random weights), the first head of multi-head ones
        for family in ("mpa-0-medium", "mh-1"):
            plan += forces(family, family, "float64") + forces(family, family, "float32")
    plan.append({"name": "polysrl", "kind": "polysrl", "min_s": 40, "cap_s": 200,
                 "spec": {"batch_size": 8 if smoke else 256, "limit": 40 if smoke else 640, "repeats": 2 if smoke else 5}})
    for unit in plan:
        unit["spec"]["smoke"] = smoke
    return plan


def select(plan: list[dict], cases: str | None) -> list[dict]:
    """Units whose name starts with one of the comma-separated prefixes (env always runs)."""
    if not cases:
        return plan
    prefixes = [c.strip() for c in cases.split(",") if c.strip()]
    chosen = [u for u in plan if u["name"] == "env" or any(u["name"].startswith(p) for p in prefixes)]
    unknown = [p for p in prefixes if not any(u["name"].startswith(p) for u in plan)]
    if unknown:
        raise SystemExit(f"--cases: no unit starts with {', '.join(unknown)}; units: {', '.join(u['name'] for u in plan)}")
    return chosen


def run_unit(unit: dict, workdir: Path, timeout: float, log) -> dict:
    """Run one unit in its own process (own session, killed whole on timeout); its record."""
    result_path = workdir / f"{unit['name']}.json"
    command = [sys.executable, str(HERE / "harness.py"), "--unit", json.dumps(unit), "--result", str(result_path)]
    log.write(f"\n===== {unit['name']} (limit {timeout:.0f} s) =====\n")
    log.flush()
    started = time.perf_counter()
    env = dict(os.environ, JAXMAT_GPU_UNIT_DEADLINE=str(time.time() + timeout))  # a unit may stop early, keeping its results
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return {"status": "timeout", "wall_s": time.perf_counter() - started, "note": f"killed after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    if code != 0 or not result_path.exists():
        return {"status": "failed", "wall_s": wall, "note": f"exit code {code}: {_last_error(log.name)}"}
    result = json.loads(result_path.read_text())
    if "unavailable" in result:
        return {"status": "unavailable", "wall_s": wall, "note": result["unavailable"]}
    return {"status": "ok", "wall_s": wall, "result": result, **({"note": result["stopped"]} if result.get("stopped") else {})}


def missing_peer(unit: dict) -> str | None:
    """Why a unit's peer cannot run here (a package not installed), found without starting its process; or None."""
    import importlib.util

    contender = unit["spec"].get("contender", "")
    needed = (["cuequivariance_torch"] if contender.endswith("-cueq") else []) + (["torch_sim"] if contender.startswith("torch-sim") else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed" if missing else None


def _last_error(log_path: str) -> str:
    lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


def child(unit_json: str, result_path: str) -> None:
    """Inside the unit's process: run it, write its JSON result and arrays."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from units import UNITS, PeerUnavailable

    unit = json.loads(unit_json)
    spec = unit["spec"]
    if spec.get("model") == "random-small":
        spec["model"] = _random_small_model(Path(result_path).parent)
    arrays: dict = {}
    print(f"unit {unit['name']}: {json.dumps(spec)}", flush=True)
    try:
        result = UNITS[unit["kind"]](spec, arrays)
    except PeerUnavailable as exc:
        result = {"unavailable": str(exc)}
    if arrays:
        np.savez(Path(result_path).with_suffix(".npz"), **arrays)
    Path(result_path).write_text(json.dumps(result, default=float))


def _random_small_model(folder: Path) -> str:
    """A small random MACE over the HEO elements saved as a model file (smoke runs without ../shared)."""
    import torch

    from jaxmat.testing import build_small_mace

    path = folder / "random_small.model"
    if not path.exists():
        torch.save(build_small_mace([8, 12, 27, 28, 29, 30], seed=0, hidden_irreps="16x0e+16x1o", r_max=5.0), path)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for results.json, results.md, results.png, harness.log")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all units together (default 420)")
    parser.add_argument("--cases", help="comma-separated unit-name prefixes to run (e.g. relax-W4,polysrl); default all")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--fresh", action="store_true", help="ignore the results already in --out")
    parser.add_argument("--unit", help=argparse.SUPPRESS)  # internal: run one unit in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.unit:
        child(args.unit, args.result)
        return 0
    deadline = time.perf_counter() + args.budget
    smoke, model = smoke_mode(), find_model()
    plan = select(build_plan(smoke, model), args.cases)
    if args.list:
        print("\n".join(u["name"] for u in plan))
        return 0
    if not args.out:
        parser.error("--out is required")
    sys.path.insert(0, str(HERE))
    from report import write_outputs

    out = Path(args.out)
    units_dir = out / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    record = {"smoke": smoke, "model": model, "budget_s": args.budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "units": {}}
    done = {}
    if (out / "results.json").exists() and not args.fresh:
        previous = json.loads((out / "results.json").read_text())
        if previous.get("smoke") == smoke:
            done = {name: entry for name, entry in previous["units"].items() if entry["status"] == "ok"}
            record["started"] = previous["started"] + f"; continued {record['started']}"
            record["budget_s"] = previous["budget_s"] + args.budget
            record["units"] = dict(done)  # kept in their order, also when --cases leaves them out now
    print(f"GPU benchmark: {len(plan)} units ({len(done)} done before), budget {args.budget:.0f} s, smoke {smoke}, "
          f"model {model}", flush=True)
    with open(out / "harness.log", "a") as log:
        for unit in plan:
            left = deadline - time.perf_counter()
            if unit["name"] in done and unit["name"] != "env":
                entry = done[unit["name"]]
            elif left < unit["min_s"]:
                entry = {"status": "skipped", "note": f"budget left {max(left, 0):.0f} s < {unit['min_s']} s needed"}
            elif missing_peer(unit):
                entry = {"status": "unavailable", "note": missing_peer(unit)}
            else:
                entry = run_unit(unit, units_dir, min(left, unit["cap_s"]), log)
            entry["kind"], entry["spec"] = unit["kind"], unit["spec"]
            record["units"][unit["name"]] = entry
            print(f"{unit['name']:40s} {entry['status']:11s} {entry.get('wall_s', 0):6.1f} s  {entry.get('note', '')}", flush=True)
            try:
                write_outputs(record, units_dir, out)
            except Exception:  # a bug in the report must not end the device run: the raw record still goes out
                traceback.print_exc()
                (out / "results.json").write_text(json.dumps(record, indent=1, default=float))
    print(f"wrote {out / 'results.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
