"""Start-up of a JAX MACE relaxation with and without the cache of converted parameters (real processes).

    python benchmarks/startup.py [--model ../shared/models/mace_heo_chgnet_small.model] [--structures 16] [--repeats 3]

Times, in fresh processes with their own cache folder (``JAXMAT_COMPILATION_CACHE`` set to a temporary one):
``load_force_field(MODEL, "jax")`` alone (imports included), and ``python -m jaxmat.relax W1 --backend jax
--optimizer lbfgs --max-steps 0`` (start-up and one force call). "converting" runs remove the converted entry
first (what every run cost before the cache); the compiled programs stay cached in both, so the difference is
the torch import and the conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOAD = ("import json, sys, time; t = time.perf_counter(); from jaxmat.forcefields.registry import load_force_field; "
        "load_force_field(sys.argv[1], 'jax'); print(json.dumps([time.perf_counter() - t, 'torch' in sys.modules]))")


def timed(command, env) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main(argv=None) -> int:
    import ase.io

    from jaxmat.testing import workload

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO.parent / "shared/models/mace_heo_chgnet_small.model"))
    parser.add_argument("--structures", type=int, default=16, help="the first N structures of W1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        env = {**os.environ, "JAXMAT_COMPILATION_CACHE": str(folder / "cache")}
        structures = folder / "w1.extxyz"
        ase.io.write(structures, workload("W1")[:args.structures], format="extxyz")
        relax = [sys.executable, "-m", "jaxmat.relax", str(structures), "--model", args.model, "--backend", "jax",
                 "--optimizer", "lbfgs", "--max-steps", "0", "--no-progress"]
        first, _ = timed([*relax, "--out", str(folder / "first.extxyz")], env)  # converts and compiles
        times: dict[tuple[str, str], list[float]] = {}
        for repeat in range(args.repeats):
            for mode in ("converting", "cached"):
                if mode == "converting":
                    shutil.rmtree(folder / "cache" / "mace")
                seconds, out = timed([sys.executable, "-c", LOAD, args.model], env)
                load_seconds, torch_imported = json.loads(out.strip().splitlines()[-1])
                assert torch_imported == (mode == "converting"), (mode, torch_imported)
                times.setdefault(("load_force_field (in the process)", mode), []).append(load_seconds)
                times.setdefault(("python -c load_force_field (process)", mode), []).append(seconds)
                if mode == "converting":
                    shutil.rmtree(folder / "cache" / "mace")
                seconds, _ = timed([*relax, "--out", str(folder / f"{mode}{repeat}.extxyz")], env)
                times.setdefault(("python -m jaxmat.relax --max-steps 0 (process)", mode), []).append(seconds)
    print(f"first run (converts and compiles): {first:.1f} s; medians of {args.repeats}")
    print("| measurement | converting (s) | cached (s) | saved (s) |\n|---|---|---|---|")
    for what in dict.fromkeys(what for what, _ in times):
        before, after = (statistics.median(times[what, mode]) for mode in ("converting", "cached"))
        print(f"| {what} | {before:.2f} | {after:.2f} | {before - after:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
