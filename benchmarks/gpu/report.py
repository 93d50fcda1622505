"""Tables and a plot from the GPU benchmark's record: results.json, results.md, results.png.

Cross-contender checks (force parity, relaxed energies agreeing) are computed here from the arrays the
units saved, and stored in the record, so results.json alone holds every number that results.md shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MIB = 2**20


def _arrays(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.npz"
    return dict(np.load(path)) if path.exists() else None


def cueq_lines(record: dict) -> list[str]:
    """The JAX MACE against mace-torch with cuEquivariance layers (same weights and dtype), where it ran."""
    rows = []
    for model in ("small", "medium"):
        for dtype in ("float64", "float32"):
            cueq, jax_result = _ok(record, f"forces-{model}-{dtype}-mace-torch-cueq"), _ok(record, f"forces-{model}-{dtype}-jaxmat-jax")
            for workload in ("W1", "W3", "W4"):
                c = (cueq or {}).get("workloads", {}).get(workload, {})
                j = (jax_result or {}).get("workloads", {}).get(workload, {})
                if c and j:
                    rows.append(f"| {model} | {dtype} | {workload} | {_ms(c.get('call_s'))} | {_ms(c.get('model_s'))} | {_ms(j.get('call_s'))} | "
                                f"{_ms(j.get('model_s'))} | {np.median(c['call_s']) / np.median(j['call_s']):.2f}x | "
                                f"{np.median(c['model_s']) / np.median(j['model_s']):.2f}x |")
    if not rows:
        return []
    return ["", "### Against mace-torch with cuEquivariance", "",
            "| model | dtype | workload | cueq call | cueq model | jaxmat call | jaxmat model | speed-up call | speed-up model |",
            "|---|---|---|---|---|---|---|---|---|"] + rows


def anneal_lines(record: dict) -> list[str]:
    """HEO swap Monte Carlo and Langevin MD, jaxmat.heo against torch-sim (the anneal unit)."""
    entry = record["units"].get("anneal-W3", {})
    if entry.get("status") != "ok":
        return []
    r = entry["result"]
    rate = lambda side, key: f"{r[side][key]:.3g}" if key in r.get(side, {}) else r.get(side, {}).get("unavailable", "–")
    return ["", f"## HEO sampling ({entry['spec']['workload']}, float64)", "",
            "| | jaxmat.heo | torch-sim | speed-up |", "|---|---|---|---|",
            f"| swap attempts/s (energies only) | {rate('jaxmat', 'attempts_per_s')} | {rate('torch-sim', 'attempts_per_s')} | "
            f"{r.get('swap_speedup', float('nan')):.2f}x |",
            f"| Langevin MD steps/s of the batch | {rate('jaxmat', 'md_steps_per_s')} | {rate('torch-sim', 'md_steps_per_s')} | "
            f"{r.get('md_speedup', float('nan')):.2f}x |"]


def parity_rows(record: dict, folder: Path) -> list[dict]:
    """JAX MACE vs mace-torch at the same dtype, and each float32 result vs mace-torch float64."""
    rows = []
    for model in ("small", "medium"):
        reference = _arrays(folder, f"forces-{model}-float64-mace-torch")
        for dtype in ("float64", "float32", "mixed"):
            torch_arrays = _arrays(folder, f"forces-{model}-{dtype}-mace-torch")
            jax_arrays = _arrays(folder, f"forces-{model}-{dtype}-jaxmat-jax")
            cueq_arrays = _arrays(folder, f"forces-{model}-{dtype}-mace-torch-cueq")
            pairs = [("jaxmat-jax vs mace-torch", jax_arrays, torch_arrays), ("mace-torch-cueq vs mace-torch", cueq_arrays, torch_arrays)]
            if dtype == "float32":
                pairs += [("mace-torch float32 vs float64", torch_arrays, reference), ("jaxmat-jax float32 vs mace-torch float64", jax_arrays, reference)]
            if dtype == "mixed":  # mace-torch has no mixed mode
                pairs = [("jaxmat-jax mixed vs mace-torch float64", jax_arrays, reference)]
            for label, a, b in pairs:
                if a is None or b is None:
                    continue
                for workload in sorted({k.split("/")[0] for k in a} & {k.split("/")[0] for k in b}):
                    rows.append({"model": model, "dtype": dtype, "comparison": label, "workload": workload,
                                 "max_abs_energy_per_atom_eV": float(np.abs(a[f"{workload}/energy_per_atom"] - b[f"{workload}/energy_per_atom"]).max()),
                                 "max_abs_force_eV_per_A": float(np.abs(a[f"{workload}/forces"] - b[f"{workload}/forces"]).max())})
    return rows


def relax_agreement_rows(record: dict, folder: Path) -> list[dict]:
    """Final energies of each relaxation contender vs jaxmat-jax on the structures both relaxed (eV)."""
    rows = []
    for name, entry in record["units"].items():
        if entry["kind"] != "relax" or entry["status"] != "ok" or entry["spec"]["contender"] == "jaxmat-jax":
            continue
        spec = entry["spec"]
        mine = _arrays(folder, f"relax-{spec['workload']}-{spec['optimizer']}-jaxmat-jax")
        theirs = _arrays(folder, name)
        if mine is None or theirs is None:
            continue
        k = min(len(mine["energies"]), len(theirs["energies"]))
        diff = np.abs(mine["energies"][:k] - theirs["energies"][:k])
        rows.append({"workload": spec["workload"], "optimizer": spec["optimizer"], "contender": spec["contender"], "structures": k,
                     "max_abs_dE_eV": float(diff.max()), "mean_abs_dE_eV": float(diff.mean())})
    return rows


def _ms(values) -> str:
    return f"{1000 * float(np.median(values)):.1f}" if values else "–"


def _mib(value) -> str:
    return f"{value / MIB:.0f}" if value else "–"


def _ok(record, name):
    entry = record["units"].get(name)
    return entry["result"] if entry and entry["status"] == "ok" else None


def profile_lines(record: dict) -> list[str]:
    """A table per ``profile`` unit: the JAX MACE stage by stage, each stage's share of the whole call."""
    lines = []
    for name, entry in record["units"].items():
        if entry["kind"] != "profile" or entry["status"] != "ok":
            continue
        r, call = entry["result"], entry["result"]["call"]
        call_s = float(np.median(call["call_s"]))
        ms = lambda seconds: f"{1000 * seconds:.3g}"
        per = lambda a, b, scale=1.0, form=".0f": format(scale * a / b, form) if b > 0 else "–"  # a report never divides by 0
        lines += ["", f"## Where the JAX MACE's time goes: `{name}` ({r['workload']}, {r['atoms']} atoms, {r['edges']} edges, "
                      f"{r['dtype']}, {r['device']})", "",
                  f"Each stage compiled alone with the inputs it gets in the real call (benchmarks/mace_roofline.py); median of "
                  f"{len(call['call_s'])} calls, each synchronised, compilation excluded (its own column). *fwd+bwd*: the VJP "
                  "w.r.t. what depends on the positions, as in a force call (*no backward*: nothing there does). *share*: "
                  "fwd+bwd over the whole call; stages alone do not fuse across their borders, so the shares need not sum "
                  "to 100 %. GFLOP and GB: XLA's cost analysis of the fwd+bwd program (bytes: operands and results of every "
                  f"op, an upper bound on memory traffic; a loop body counted once). Whole compiled call (energies, forces, "
                  f"stress): **{ms(call_s)} ms**, {call['flops'] / 1e9:.3g} GFLOP, {call['bytes'] / 1e9:.3g} GB, compiled "
                  f"in {call['compile_s']:.1f} s; host inputs (neighbour matrix, padding) {r['host_inputs_s']:.2f} s.", "",
                  "| stage | fwd ms | fwd+bwd ms | GFLOP | GB | GB/s | share of call | compile s |", "|---|---|---|---|---|---|---|---|"]
        totals = np.zeros(3)
        for row in r["stages"]:
            fwd, both = float(np.median(row["fwd_s"])), float(np.median(row["fwd_bwd_s"]))
            compile_s = row["compile_fwd_s"] + row["compile_fwd_bwd_s"]
            totals += (fwd, both, compile_s)
            lines.append(f"| {row['stage']}{'' if row['differentiated'] else ' (no backward)'} | {ms(fwd)} | {ms(both)} | "
                         f"{row['fwd_bwd_flops'] / 1e9:.3g} | {row['fwd_bwd_bytes'] / 1e9:.3g} | {per(row['fwd_bwd_bytes'], both, 1e-9)} | "
                         f"{per(both, call_s, 100, '.1f')} % | {compile_s:.1f} |")
        lines.append(f"| sum of the stages | {ms(totals[0])} | {ms(totals[1])} | | | | {per(totals[1], call_s, 100)} % | {totals[2]:.1f} |")
        lines.append(f"| whole call | | {ms(call_s)} | {call['flops'] / 1e9:.3g} | {call['bytes'] / 1e9:.3g} | "
                     f"{per(call['bytes'], call_s, 1e-9)} | 100 % | {call['compile_s']:.1f} |")
        if r.get("blocked_call"):
            blocked = r["blocked_call"]
            blocked_s = float(np.median(blocked["call_s"]))
            lines += ["", f"The same whole call with the product basis in blocks of {blocked['block']} monomials "
                          f"(`MACEJax(contraction_block={blocked['block']})`): **{ms(blocked_s)} ms** "
                          f"({per(call_s, blocked_s, 1, '.2f')}x the one-monomial loop), compiled in {blocked['compile_s']:.1f} s."]
        if r.get("stopped"):
            lines += ["", f"Profile {r['stopped']}."]
        if r.get("traced_only"):
            lines += ["", f"Traced only, neither compiled nor timed (the smoke run's shortcut): {', '.join(r['traced_only'])}."]
    return lines


def precision_lines(record: dict) -> list[str]:
    """One table of the ``precision`` units: each stage's relative error in float32 against float64 under every
    environment variant measured (forward / VJP), and the whole call's errors."""
    results = {name: entry["result"] for name, entry in record["units"].items() if entry["kind"] == "precision" and entry["status"] == "ok"}
    if not results:
        return []
    first = next(iter(results.values()))
    error = lambda value: "–" if value is None else f"{value:.1e}"  # noqa: E731
    lines = ["", f"## Where float32 loses accuracy ({first['workload']}, {first['atoms']} atoms, {first['device']})", "",
             "Each stage of the float32 JAX MACE on the float64 stage's inputs (cast), against the float64 stage: its own "
             "relative error max|f32 - f64| / max|f64|, forward / VJP (benchmarks/mace_roofline.py stage_errors). "
             "float32 rounding alone is ~1e-7; TensorFloat-32 gives ~1e-3. One column per environment variant.", "",
             "| stage | " + " | ".join(r["variant"] for r in results.values()) + " |", "|---|" + "---|" * len(results)]
    for i, row in enumerate(first["stages"]):
        cells = [f"{error(r['stages'][i]['forward'])} / {error(r['stages'][i]['backward'])}" if i < len(r["stages"]) else "–"
                 for r in results.values()]
        lines.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
    lines.append("| whole call: energy eV/atom / forces eV/Å | " + " | ".join(
        f"{r['energy_per_atom_error']:.1e} / {r['force_error']:.1e}" for r in results.values()) + " |")
    return lines


def render(record: dict) -> str:
    env = _ok(record, "env") or {}
    lines = ["# GPU benchmark results", ""]
    lines.append(f"Device: {env.get('gpu') or env.get('jax_backend', '?')} ({env.get('nvidia_smi') or 'no nvidia-smi'}); "
                 f"{env.get('cpu_count', '?')} CPU cores; Python {env.get('python', '?')}; jax {env.get('jax', '?')} "
                 f"({env.get('jax_backend', '?')}), torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), "
                 f"mace-torch {env.get('mace', '?')}, torch-sim {env.get('torch_sim', '?')}, ase {env.get('ase', '?')}.")
    lines.append(f"Started {record['started']}; budget {record['budget_s']:.0f} s; model {record['model'] or 'none (medium shape stands in)'}"
                 f"{'; SMOKE RUN (toy sizes)' if record['smoke'] else ''}.")
    lines += ["", "## Parity (max absolute differences)", "", "| model | dtype | comparison | workload | energy (eV/atom) | forces (eV/Å) |", "|---|---|---|---|---|---|"]
    for row in record.get("parity", []):
        lines.append(f"| {row['model']} | {row['dtype']} | {row['comparison']} | {row['workload']} | {row['max_abs_energy_per_atom_eV']:.1e} | {row['max_abs_force_eV_per_A']:.1e} |")
    lines += ["", "## One force call (energies + forces), median ms", "",
              "`call`: as the relaxer makes it, host neighbour lists / graphs and copies included; `model`: the model alone on "
              "inputs already on the device. Peak: device memory (torch: max allocated in the call; JAX: process peak so far). "
              "`mixed`: the JAX MACE's float32 model with float64 geometry and sums, beside mace-torch float32.", "",
              "| model | dtype | workload | atoms | mace-torch call | mace-torch model | jaxmat call | jaxmat model | jaxmat first call (s) | "
              "speed-up call | speed-up model | peak MiB torch / jax |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in ("small", "medium"):
        for dtype in ("float64", "float32", "mixed"):
            # mixed (JAX only) is set against mace-torch's own fast mode, float32
            torch_result = _ok(record, f"forces-{model}-{'float32' if dtype == 'mixed' else dtype}-mace-torch")
            jax_result = _ok(record, f"forces-{model}-{dtype}-jaxmat-jax")
            if not torch_result and not jax_result:
                continue
            for workload in ("W1", "W3", "W4"):
                t = (torch_result or {}).get("workloads", {}).get(workload, {})
                j = (jax_result or {}).get("workloads", {}).get(workload, {})
                if not t and not j:
                    continue
                ratio = lambda key: f"{np.median(t[key]) / np.median(j[key]):.2f}x" if t.get(key) and j.get(key) else "–"
                lines.append(f"| {model} | {dtype} | {workload} | {t.get('atoms') or j.get('atoms')} | {_ms(t.get('call_s'))} | {_ms(t.get('model_s'))} | "
                             f"{_ms(j.get('call_s'))} | {_ms(j.get('model_s'))} | {j.get('first_call_s', float('nan')):.1f} | {ratio('call_s')} | "
                             f"{ratio('model_s')} | {_mib(t.get('peak_device_bytes'))} / {_mib(j.get('peak_device_bytes'))} |")
    lines += cueq_lines(record)
    lines += anneal_lines(record)
    lines += profile_lines(record)
    lines += precision_lines(record)
    lines += ["", "## Relaxation (float64, fmax 0.05 eV/Å, all structures in one batch; ASE one at a time on the first few)", "",
              "| workload | optimizer | contender | structures | seconds | structures/s | steps mean / max | converged | "
              "outside force calls | cold run (s) / compiled shapes |", "|---|---|---|---|---|---|---|---|---|---|"]
    rates = {}
    for name, entry in record["units"].items():
        if entry["kind"] != "relax" or entry["status"] != "ok":
            continue
        r, spec = entry["result"], entry["spec"]
        rates[(spec["workload"], spec["optimizer"], spec["contender"])] = r["structures_per_s"]
        steps = f"{np.mean(r['steps']):.1f} / {max(r['steps'])}" if r.get("steps") else "n/a"
        outside = f"{100 * r['outside_force_fraction']:.1f} %" if "outside_force_fraction" in r else "–"
        cold = f"{r['cold_seconds']:.1f} / {r['compiled_shapes']}" if "cold_seconds" in r else "–"
        lines.append(f"| {spec['workload']} | {spec['optimizer']} | {spec['contender']} | {r['structures']} | {r['seconds']:.2f} | "
                     f"{r['structures_per_s']:.2f} | {steps} | {r['converged']}/{r['structures']} | {outside} | {cold} |")
    ratios = []
    for (workload, optimizer, contender), rate in sorted(rates.items()):
        if contender != "jaxmat-jax":
            ratios.append(f"{workload} {optimizer}: jaxmat-jax / {contender} {rates.get((workload, optimizer, 'jaxmat-jax'), float('nan')) / rate:.2f}x")
    if ratios:
        lines += ["", "Structures/s ratios (warm jaxmat-jax over each peer): " + "; ".join(ratios) + "."]
    if record.get("relax_agreement"):
        lines += ["", "| workload | optimizer | final energies vs jaxmat-jax | structures | max abs dE (eV) | mean abs dE (eV) |", "|---|---|---|---|---|---|"]
        for row in record["relax_agreement"]:
            lines.append(f"| {row['workload']} | {row['optimizer']} | {row['contender']} | {row['structures']} | {row['max_abs_dE_eV']:.1e} | {row['mean_abs_dE_eV']:.1e} |")
    polysrl = _ok(record, "polysrl")
    if polysrl:
        jax_step = np.median(polysrl["jax_step_s"])
        if polysrl.get("torch_step_s"):
            torch_step = np.median(polysrl["torch_step_s"])
            torch_cells = f"{torch_step:.4f} | {torch_step / jax_step:.2f}x | {polysrl['loss_rel_diff']:.1e}"
        else:
            torch_cells = "– | – | –"
        lines += ["", "## PolySRL train step (float32)", "", "| batch | atoms | jaxmat s/step | PyTorch + PyG s/step | speed-up | loss rel. diff | peak MiB torch / jax |",
                  "|---|---|---|---|---|---|---|",
                  f"| {polysrl['batch_size']} | {polysrl['atoms']} | {jax_step:.4f} | {torch_cells} | "
                  f"{_mib(polysrl.get('torch_peak_device_bytes'))} / {_mib(polysrl.get('jax_peak_device_bytes'))} |"]
        if polysrl.get("torch_unavailable"):
            lines.append(f"\nPyTorch contender: {polysrl['torch_unavailable']}.")
    lines += ["", "## Units", "", "| unit | status | wall (s) | note |", "|---|---|---|---|"]
    for name, entry in record["units"].items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('wall_s', 0):.1f} | {entry.get('note', '')} |")
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    force_labels, force_ratios = [], []
    for name, entry in record["units"].items():
        if entry["status"] != "ok" or entry["kind"] != "forces" or not name.endswith("jaxmat-jax"):
            continue
        peer = _ok(record, name.replace("jaxmat-jax", "mace-torch"))
        if not peer:
            continue
        for workload, j in entry["result"]["workloads"].items():
            t = peer["workloads"].get(workload)
            if t and t["call_s"] and j["call_s"]:
                force_labels.append(f"{entry['spec']['model'] if entry['spec']['model'] == 'medium' else 'small'} {entry['spec']['dtype'][-2:]} {workload}")
                force_ratios.append(np.median(t["call_s"]) / np.median(j["call_s"]))
    relax = {}
    for entry in record["units"].values():
        if entry["status"] == "ok" and entry["kind"] == "relax":
            spec = entry["spec"]
            relax.setdefault(f"{spec['workload']} {spec['optimizer']}", {})[spec["contender"]] = entry["result"]["structures_per_s"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(force_labels, force_ratios, color="tab:blue")
    left.axvline(1.0, color="k", lw=0.8)
    left.set_xlabel("force call speed-up, jaxmat JAX MACE / mace-torch")
    contenders = ["jaxmat-jax", "jaxmat-torch", "torch-sim", "torch-sim-cueq", "ase"]
    groups = list(relax)
    for k, contender in enumerate(contenders):
        values = [relax[g].get(contender, 0.0) for g in groups]
        right.bar(np.arange(len(groups)) + 0.16 * k, values, width=0.16, label=contender)
    right.set_xticks(np.arange(len(groups)) + 0.32, groups)
    if any(v > 0 for g in groups for v in relax[g].values()):
        right.set_yscale("log")
    right.set_ylabel("structures / s")
    right.legend(fontsize=8)
    figure.suptitle("jaxmat GPU benchmark" + (" (smoke)" if record["smoke"] else ""))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(record: dict, folder: Path, out: Path) -> None:
    """Derived checks into the record, then results.json, results.md and results.png in out."""
    record["parity"] = parity_rows(record, folder)
    record["relax_agreement"] = relax_agreement_rows(record, folder)
    (out / "results.json").write_text(json.dumps(record, indent=1, default=float))
    (out / "results.md").write_text(render(record))
    plot(record, out / "results.png")
