"""Training runs on forced CPU devices, for tests/test_distributed.py: ``python distributed_worker.py SPEC``.

XLA_FLAGS (the device count) must be set before JAX is imported, so this runs in its own interpreter.
SPEC (JSON): {"devices": 4, "runs": [{"workdir": ..., "epochs": 2, "n_devices": 4, "set": [...],
"break": null | "no_psum" | "gather_order"}]}. Prints one JSON line: per run, its history or its error.
"""

import json
import os
import sys
from pathlib import Path

spec = json.loads(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxmat.polysrl.parallel as parallel  # noqa: E402
from jaxmat.config import apply_overrides, load_config  # noqa: E402
from jaxmat.polysrl.trainer import run_training  # noqa: E402
from jaxmat.precision import use_float64  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.source=embedded:heo", "data.limit=40", "train.batch_size=16", "model.hidden=16", "model.n_samples=4",
         "train.lr=1e-3", "model.dtype=float64", "model.structure_layers=1", "model.stoichiometry_layers=1",
         "model.set2set_steps=1"]
use_float64(True)
original_step, original_index = parallel.make_parallel_step, parallel.gather_index


def planted(kind):
    """Deliberate faults, to show the equality tests can fail."""
    parallel.make_parallel_step, parallel.gather_index = original_step, original_index
    if kind == "no_psum":
        parallel.make_parallel_step = lambda *a, **k: original_step(*a[:4], reduce_gradients=False)
    elif kind == "gather_order":  # rows of devices 0 and 1 swapped
        def swapped(batch_size, per_device):
            index = original_index(batch_size, per_device)
            index[:2 * per_device] = np.roll(index[:2 * per_device], per_device)
            return index
        parallel.gather_index = swapped


results = []
for run in spec["runs"]:
    planted(run.get("break"))
    config = apply_overrides(load_config(REPO / "configs/polysrl.yaml"), SMALL + [f"train.epochs={run['epochs']}", *run.get("set", [])])
    try:
        history = run_training(config, run["workdir"], progress=False, devices=jax.devices()[: run["n_devices"]])
        results.append({"history": history})
    except Exception as exc:  # reported, for the bad-input tests
        results.append({"error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(results))
