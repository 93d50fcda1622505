"""The measurements of the GPU benchmark, one unit per process (run by harness.py, never imported by jaxmat).

Each unit takes a spec (dict) and returns a JSON-able dict; arrays for the cross-contender checks
(energies, forces) go to an .npz beside the result. Every contender gets the same weights, dtype,
structures and device; timings are wall-clock seconds with the device synchronised (a numpy copy of the
outputs, ``block_until_ready`` or ``torch.cuda.synchronize``). Units:

- ``env``: device, driver, versions.
- ``forces``: one force call (energies + forces) per workload for one contender (mace-torch through
  jaxmat's bridge, mace-torch with its layers converted to NVIDIA cuEquivariance by mace-torch's own converter
  as ``enable_cueq=True`` does (``mace-torch-cueq``), or jaxmat's JAX MACE), model and dtype: the call as the relaxer makes it (host
  neighbour lists / graphs included) and the model alone on inputs already on the device; first call
  (compilation), peak device memory.
- ``relax``: one relaxation contender (jaxmat with either backend, torch-sim's batched optimizer with plain or
  cuEquivariance MACE (``torch-sim-cueq``: ``MaceModel(enable_cueq=True)``), ASE one structure at a time) on one workload with FIRE or L-BFGS.
- ``anneal``: HEO swap Monte Carlo attempts/s (energies only) and Langevin MD steps/s, jaxmat.heo
  (benchmarks/anneal_speed.py) against torch-sim's swap_monte_carlo and nvt_langevin (benchmarks/anneal_torchsim.py),
  same model and cells, each script in its own process.
- ``polysrl``: the PolySRL train step, jaxmat (jit) vs the PyTorch + torch-geometric expression of
  benchmarks/polysrl_train_step.py, same parameters and noise.
- ``profile``: where the JAX MACE's time goes: every stage of one call (benchmarks/mace_roofline.py)
  compiled alone with the inputs it gets in the real call, forward and forward+backward, XLA FLOPs and
  bytes, compile seconds apart; and the whole compiled call on the same inputs.
- ``precision``: where the JAX MACE's float32 loses accuracy on this device, stage by stage against float64
  (mace_roofline.stage_errors), under one environment variant set before JAX starts (TF32 override, XLA
  flags), and the whole float32 call's energy and force error.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1]


class PeerUnavailable(RuntimeError):
    """A peer package this unit measures is not installed (reported as unavailable, not as a failure)."""


# --- shared helpers -----------------------------------------------------------------------------------


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def jax_peak_bytes() -> int | None:
    """Peak bytes JAX has held on its first device in this process (None where the backend does not say)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def torch_peak_bytes() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def reset_torch_peak():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def structures(workload: str, smoke: bool):
    """The HEO rock-salt cells of a workload; smoke: the same kind of cells at toy sizes."""
    from jaxmat.heo.generate import rocksalt_heo
    from jaxmat.testing import workload as full_workload

    if smoke:
        count, n = {"W1": (2, 1), "W3": (3, 1), "W4": (1, 2)}[workload]
        return [rocksalt_heo(n, seed=seed) for seed in range(count)]
    return full_workload(workload)


def load_model(model: str, smoke: bool):
    """A mace-torch module: a model file, the MACE-MP-0 "medium" shape, or a foundation family's shape of
    jaxmat.testing.FAMILY_SHAPES ("mpa-0-medium", "mh-1", "omol-0") with random weights over 89 elements (smoke:
    the same architecture at 16 channels)."""
    import torch

    from jaxmat.testing import FAMILY_SHAPES, build_small_mace, family_shape

    if model in FAMILY_SHAPES and model != "mp-0-medium":
        return build_small_mace(list(range(1, 90)), seed=0, avg_num_neighbors=61.96, scale_shift=(0.8, 0.1),
                                **family_shape(model, channels=16 if smoke else None))
    if model != "medium":
        return torch.load(model, map_location="cpu", weights_only=False)

    channels = 16 if smoke else 128
    return build_small_mace(list(range(1, 90)), seed=0, hidden_irreps=f"{channels}x0e+{channels}x1o", max_ell=3, correlation=3,
                            r_max=6.0, num_bessel=10, avg_num_neighbors=61.96, scale_shift=(0.8, 0.1))


def cueq_model(model, device: str, dtype: str):
    """A copy of the mace-torch model with its layers converted to cuEquivariance by mace-torch's own converter
    (what ``MACECalculator(enable_cueq=True)`` runs); PeerUnavailable where cuequivariance_torch is not installed."""
    import copy

    import torch

    try:
        import cuequivariance_torch  # noqa: F401
        from mace.cli.convert_e3nn_cueq import run as convert_to_cueq
    except ImportError as exc:
        raise PeerUnavailable(f"cuequivariance_torch is not installed ({exc}); pip install cuequivariance-torch "
                              "cuequivariance-ops-torch-cu13") from exc
    source = copy.deepcopy(model).to(dtype=torch.float64 if dtype == "float64" else torch.float32)
    return convert_to_cueq(source, device=device, return_model=True)


def timed(function, repeats: int):
    """(first-call seconds, list of later-call seconds, last output)."""
    started = time.perf_counter()
    out = function()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = function()
        times.append(time.perf_counter() - started)
    return first, times, out


# --- units --------------------------------------------------------------------------------------------


def unit_env(spec, arrays):
    import jax
    import torch

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "torch_device": torch_device(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "smoke": bool(spec.get("smoke"))}
    for name in ("mace", "e3nn", "e3nn_jax", "jax_md", "ase", "vesin", "torch_sim", "flax"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "installed")
        except Exception as exc:  # a missing peer is reported, not fatal
            info[name] = f"missing ({type(exc).__name__})"
    try:
        query = "name,memory.total,driver_version,clocks.max.sm"
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    return info


def unit_forces(spec, arrays):
    """One contender, model and dtype over the workloads (smallest first: JAX's peak is per process)."""
    import torch

    from jaxmat.forcefields.base import batch_from_atoms

    smoke, dtype, contender = spec["smoke"], spec["dtype"], spec["contender"]
    device = torch_device()
    model = load_model(spec["model"], smoke)
    heads = list(getattr(model, "heads", None) or ["Default"])
    head = heads[0] if len(heads) > 1 else None  # multi-head shapes: the first head on both sides
    results = {}
    for workload in spec["workloads"]:
        batch = batch_from_atoms(structures(workload, smoke))
        n_atoms = len(batch.numbers)
        reset_torch_peak()
        if contender in ("mace-torch", "mace-torch-cueq"):
            from jaxmat.forcefields.mace_torch import MACETorch
            from mace.tools import torch_geometric

            torch_model = cueq_model(model, device, dtype) if contender == "mace-torch-cueq" else model
            force_field = MACETorch(torch_model, device=device, dtype=dtype, head=head)
            first, call_times, out = timed(lambda: force_field(batch), spec["repeats"])
            collated = torch_geometric.Batch.from_data_list(force_field._graphs(batch)).to(device).to_dict()

            def model_only():
                result = force_field.model(collated, compute_stress=False, training=False)
                synchronize()
                return result

            _, model_times, _ = timed(model_only, spec["repeats"])
            peak = torch_peak_bytes()
            n_edges = int(collated["edge_index"].shape[1])
        else:
            import jax

            from jaxmat.forcefields.mace.forcefield import MACEJax

            force_field = MACEJax.from_torch(model, dtype=dtype, head=head)
            first, call_times, out = timed(lambda: force_field(batch), spec["repeats"])
            inputs = force_field.padded_inputs(batch)
            _, model_times, _ = timed(lambda: jax.block_until_ready(force_field.evaluate_padded(inputs)), spec["repeats"])
            peak = jax_peak_bytes()
            n_edges = int(np.asarray(inputs["neighbor_mask"]).sum())
        arrays[f"{workload}/energy_per_atom"] = out.energy / np.bincount(batch.system_index)
        arrays[f"{workload}/forces"] = out.forces
        results[workload] = {"atoms": n_atoms, "systems": batch.n_systems, "edges": n_edges, "first_call_s": first,
                             "call_s": call_times, "model_s": model_times, "peak_device_bytes": peak}
        del force_field
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"device": device, "workloads": results}


def unit_relax(spec, arrays):
    smoke, workload, optimizer, contender = spec["smoke"], spec["workload"], spec["optimizer"], spec["contender"]
    cells = structures(workload, smoke)
    model_path = spec["model"]
    fmax, max_steps = spec["fmax"], spec["max_steps"]
    runner = {"jaxmat-jax": relax_jaxmat, "jaxmat-torch": relax_jaxmat, "torch-sim": relax_torch_sim, "torch-sim-cueq": relax_torch_sim,
              "ase": relax_ase}[contender]
    result = runner(cells, model_path, contender, optimizer, fmax, max_steps, spec)
    arrays["energies"] = np.asarray(result.pop("energies"), np.float64)
    result["structures_per_s"] = result["structures"] / result["seconds"]
    return result


def relax_jaxmat(cells, model_path, contender, optimizer, fmax, max_steps, spec):
    """jaxmat's batched relaxer, every structure in one batch; the JAX backend runs twice (cold: compilation
    inside the timing, as a user's first run; warm: the shapes compiled)."""
    from jaxmat.relax import relax

    max_atoms = sum(len(a) for a in cells)
    if contender == "jaxmat-jax":
        from jaxmat.forcefields.mace.forcefield import MACEJax

        force_field = MACEJax.from_torch(model_path)
    else:
        from jaxmat.forcefields.mace_torch import MACETorch

        force_field = MACETorch(model_path, device=torch_device())
        force_field(_batch(cells[:1]))  # CUDA context and kernels loaded outside the timing
    runs = []
    for _ in range(2 if contender == "jaxmat-jax" else 1):
        started = time.perf_counter()
        results = relax(cells, force_field, optimizer=optimizer, fmax=fmax, max_steps=max_steps, max_atoms=max_atoms,
                        progress=False)
        runs.append((time.perf_counter() - started, results.stats, results))
    seconds, stats, results = runs[-1]
    out = {"structures": len(cells), "seconds": seconds, "steps": [r.n_steps for r in results],
           "converged": sum(r.status == "converged" for r in results), "force_calls": stats["force_calls"],
           "outside_force_fraction": 1 - (stats["force_seconds"] + stats.get("compile_seconds", 0.0)) / stats["total_seconds"],
           "energies": [r.energy for r in results]}
    if contender == "jaxmat-jax":
        out["cold_seconds"] = runs[0][0]
        # the device loop (default for the JAX MACE) counts its compiled shapes; the host loop's are MACEJax's
        out["compiled_shapes"] = runs[0][1].get("compilations", len(force_field.compiled_shapes))
        out.update({key: runs[0][1][key] for key in ("compile_seconds",) if key in runs[0][1]})
        out.update({key: stats[key] for key in ("loop_calls", "rebuilds", "device_seconds", "host_seconds") if key in stats})
    return out


def _batch(cells):
    from jaxmat.forcefields.base import batch_from_atoms

    return batch_from_atoms(cells)


def relax_torch_sim(cells, model_path, contender, optimizer, fmax, max_steps, spec):
    """torch-sim's batched optimizer (ASE-flavoured FIRE, or L-BFGS), all structures in one batch, MACE
    through torch-sim's own MaceModel with its default neighbour list and its default convergence checks
    (every 5 steps); ``torch-sim-cueq``: its MaceModel with enable_cueq=True (cuEquivariance layers)."""
    import torch

    try:
        import torch_sim as ts
        from torch_sim.models.mace import MaceModel
    except ImportError as exc:
        raise PeerUnavailable(f"torch-sim is not installed ({exc}); pip install 'jaxmat[bench]'") from exc

    from importlib.metadata import version

    torch_sim_version = version("torch-sim-atomistic")
    device = torch.device(torch_device())
    cueq = contender == "torch-sim-cueq"
    if cueq:
        try:
            import cuequivariance_torch  # noqa: F401
        except ImportError as exc:
            raise PeerUnavailable(f"cuequivariance_torch is not installed ({exc})") from exc
    model = MaceModel(model=torch.load(model_path, map_location=device, weights_only=False), device=device,
                      dtype=torch.float64, compute_forces=True, compute_stress=False, **({"enable_cueq": True} if cueq else {}))
    if hasattr(ts, "Optimizer"):  # torch-sim >= 0.4
        chosen = {"fire": ts.Optimizer.fire, "lbfgs": ts.Optimizer.lbfgs}[optimizer]
    else:  # 0.3.x (Python 3.11): FIRE only
        if optimizer != "fire":
            raise PeerUnavailable(f"torch-sim {torch_sim_version} has no batched {optimizer}")
        chosen = ts.optimizers.fire
    convergence = ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=False)
    ts.optimize(system=[a.copy() for a in cells[:1]], model=model, optimizer=chosen, convergence_fn=convergence,
                max_steps=2)  # warm-up: CUDA context and kernels outside the timing
    synchronize()
    started = time.perf_counter()
    state = ts.optimize(system=[a.copy() for a in cells], model=model, optimizer=chosen, convergence_fn=convergence,
                        max_steps=max_steps)
    synchronize()
    seconds = time.perf_counter() - started
    out = model(state)
    forces = out["forces"].detach().cpu().numpy()
    system_index = state.system_idx.cpu().numpy() if hasattr(state, "system_idx") else state.batch.cpu().numpy()
    fmax_per = [np.linalg.norm(forces[system_index == i], axis=1).max() for i in range(len(cells))]
    return {"structures": len(cells), "seconds": seconds, "steps": None, "converged": int(sum(f < fmax for f in fmax_per)),
            "energies": out["energy"].detach().cpu().numpy().tolist(), "torch_sim": torch_sim_version}


def relax_ase(cells, model_path, contender, optimizer, fmax, max_steps, spec):
    """ASE's optimizer with mace-torch's calculator on the same device, one structure at a time, for the
    first spec['ase_structures'] structures (the rate is per structure)."""
    sys.path.insert(0, str(BENCHMARKS))
    from relax_throughput import run_ase

    chosen = cells[: spec["ase_structures"]]
    result = run_ase(chosen, model_path, optimizer, fmax, max_steps, device=torch_device())
    return {"structures": len(chosen), **{key: result[key] for key in ("seconds", "steps", "converged", "energies")}}


def unit_polysrl(spec, arrays):
    """jaxmat's step, then the PyTorch + PyG step (reported missing, with jaxmat's numbers kept, where
    torch-geometric is not installed: it comes with the bench extra)."""
    sys.path.insert(0, str(BENCHMARKS))
    from polysrl_train_step import build_batches, time_jax, time_torch, torch_inputs

    chunk, batch, full_batch = build_batches(spec["batch_size"], seed=0, limit=spec.get("limit"))
    params, eps, jax_loss, jax_compile, jax_times = time_jax(batch, spec["repeats"], seed=0)
    out = {"batch_size": len(chunk), "atoms": int(batch.crystal.n_node[: len(chunk)].sum()), "jax_compile_s": jax_compile,
           "jax_step_s": jax_times, "jax_loss": jax_loss, "jax_peak_device_bytes": jax_peak_bytes()}
    try:
        import torch_geometric  # noqa: F401
    except ImportError as exc:
        out["torch_unavailable"] = f"torch-geometric is not installed ({exc}); pip install 'jaxmat[bench]'"
        return out
    reset_torch_peak()
    torch_loss, torch_first, torch_times = time_torch(torch_inputs(full_batch, chunk), params, eps, spec["repeats"], device=torch_device())
    out.update({"torch_first_s": torch_first, "torch_step_s": torch_times, "torch_loss": torch_loss,
                "torch_peak_device_bytes": torch_peak_bytes(), "loss_rel_diff": abs(torch_loss - jax_loss) / abs(jax_loss)})
    return out


def unit_profile(spec, arrays):
    """The JAX MACE stage by stage on one workload (mace_roofline.profile_stages / profile_call): the whole
    compiled call first, then each stage, compiled alone (compile seconds reported, not timed), forward and
    forward+backward, ``repeats`` synchronised calls after a warm-up (spec max_stages: the first few only, the
    rest traced, as the smoke run does). Stops before a stage that would not finish before the harness's
    limit for this unit (JAXMAT_GPU_UNIT_DEADLINE) and says so."""
    if spec["smoke"]:  # toy timings mean nothing; XLA's backend optimisations off: 40 % less compilation (CI's time)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    import jax

    sys.path.insert(0, str(BENCHMARKS))
    from mace_roofline import profile_call, profile_stages

    from jaxmat.forcefields.base import batch_from_atoms
    from jaxmat.forcefields.mace.forcefield import MACEJax

    smoke, repeats = spec["smoke"], spec["repeats"]
    deadline = float(os.environ.get("JAXMAT_GPU_UNIT_DEADLINE", "inf"))  # time.time() when the harness kills this unit
    force_field = MACEJax.from_torch(load_model(spec["model"], smoke), dtype=spec["dtype"])
    batch = batch_from_atoms(structures(spec["workload"], smoke))
    started = time.perf_counter()
    inputs = force_field.padded_inputs(batch)
    host_s = time.perf_counter() - started
    call = profile_call(force_field, inputs, repeats)
    print(f"whole call {1e3 * np.median(call['call_s']):.1f} ms (compiled in {call['compile_s']:.1f} s), "
          f"{call['flops'] / 1e9:.3f} GFLOP, {call['bytes'] / 1e9:.3f} GB", flush=True)
    blocked = None
    if spec.get("contraction_block") and time.time() + 3 * call["compile_s"] + 10 < deadline:
        # the same call with the product basis in blocks of monomials (MACEJax(contraction_block=...)): fewer, larger
        # loop steps than the one-monomial loop, which the profile shows launch-bound on a GPU
        other = MACEJax.from_torch(load_model(spec["model"], smoke), dtype=spec["dtype"], contraction_block=spec["contraction_block"])
        blocked = {"block": spec["contraction_block"], **profile_call(other, inputs, repeats)}
        print(f"whole call, contraction_block={blocked['block']}: {1e3 * np.median(blocked['call_s']):.1f} ms", flush=True)
        del other

    def show(row):
        print(f"{row['stage']:38s} fwd {1e3 * np.median(row['fwd_s']):9.2f} ms  fwd+bwd {1e3 * np.median(row['fwd_bwd_s']):9.2f} ms  "
              f"compile {row['compile_fwd_s'] + row['compile_fwd_bwd_s']:5.1f} s", flush=True)

    profile = profile_stages(force_field, inputs, repeats, max_stages=spec.get("max_stages"), deadline=deadline - 5, log=show)
    result = {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "workload": spec["workload"],
              "dtype": spec["dtype"], "atoms": len(batch.numbers), "systems": batch.n_systems,
              "edges": int(np.asarray(inputs["neighbor_mask"]).sum()), "neighbor_matrix": list(inputs["neighbors"].shape),
              "host_inputs_s": host_s, "call": call, "stages": profile["rows"], "traced_only": profile["traced_only"],
              "peak_device_bytes": jax_peak_bytes(), **({"blocked_call": blocked} if blocked else {})}
    if profile["stopped"]:
        result["stopped"] = profile["stopped"]
    return result


def unit_precision(spec, arrays):
    """The float32 (or mixed) JAX MACE against its float64 self on one workload: each stage's own relative error,
    forward and VJP, on the float64 stage's inputs (mace_roofline.stage_errors), then the whole call's energy
    (eV/atom) and force (eV/Å) error. spec env: variables set before JAX starts (XLA_FLAGS appended to)."""
    env = dict(spec.get("env", {}))
    if spec["smoke"]:  # toy sizes: XLA's backend optimisations off, 40 % less compilation (CI's time)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    for key, value in env.items():
        os.environ[key] = (os.environ.get(key, "") + " " + value).strip() if key == "XLA_FLAGS" else value
    import jax

    sys.path.insert(0, str(BENCHMARKS))
    from mace_roofline import stage_errors

    from jaxmat.forcefields.base import batch_from_atoms
    from jaxmat.forcefields.mace.forcefield import MACEJax

    model = load_model(spec["model"], spec["smoke"])
    batch = batch_from_atoms(structures(spec["workload"], spec["smoke"]))
    reference, low = MACEJax.from_torch(model, dtype="float64"), MACEJax.from_torch(model, dtype=spec["dtype"])
    stages = stage_errors(reference, low, reference.padded_inputs(batch), low.padded_inputs(batch), spec.get("max_stages"))
    exact, approximate = reference(batch), low(batch)
    atoms_per_system = np.bincount(batch.system_index)
    return {"variant": spec["variant"], "env": spec.get("env", {}), "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "dtype": spec["dtype"], "workload": spec["workload"], "atoms": len(batch.numbers), "stages": stages,
            "energy_per_atom_error": float(np.max(np.abs(approximate.energy - exact.energy) / atoms_per_system)),
            "force_error": float(np.max(np.abs(approximate.forces - exact.forces)))}


def unit_anneal(spec, arrays):
    """jaxmat.heo's swap MC and MD against torch-sim's on one workload (the two benchmark scripts, their JSON)."""
    import json
    import tempfile

    smoke = spec["smoke"]
    common = ["--model", spec["model"], "--workload", spec["workload"]] + (["--first", "2"] if smoke else [])
    runs = {"jaxmat": ["anneal_speed.py", "--sweeps", "1" if smoke else "3", "--md-steps", "2" if smoke else "20"],
            "torch-sim": ["anneal_torchsim.py", "--steps", "2" if smoke else "8", "--md-steps", "1" if smoke else "5"]}
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (script, *options) in runs.items():
            target = Path(folder) / f"{name}.json"
            done = subprocess.run([sys.executable, str(BENCHMARKS / script), *common, *options, "--json", str(target)],
                                  capture_output=True, text=True)
            if done.returncode != 0 or not target.exists():
                out[name] = {"unavailable": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
                continue
            out[name] = json.loads(target.read_text())
    if "attempts_per_s" not in out["jaxmat"]:
        raise RuntimeError(f"jaxmat anneal benchmark failed: {out['jaxmat']}")
    if "attempts_per_s" in out["torch-sim"]:
        out["swap_speedup"] = out["jaxmat"]["attempts_per_s"] / out["torch-sim"]["attempts_per_s"]
        if "md_steps_per_s" in out["torch-sim"]:
            out["md_speedup"] = out["jaxmat"]["md_steps_per_s"] / out["torch-sim"]["md_steps_per_s"]
    return out


UNITS = {"env": unit_env, "forces": unit_forces, "relax": unit_relax, "polysrl": unit_polysrl, "profile": unit_profile,
         "precision": unit_precision, "anneal": unit_anneal}
