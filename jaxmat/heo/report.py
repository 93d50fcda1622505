"""The HEO evaluation report, computed only from the raw outputs that ``jaxmat.heo.evaluate`` saved.

    python -m jaxmat.heo.report REPORT     # (re)writes REPORT/metrics.json, REPORT/report.md and the plots

Units: energies eV (per atom where stated, meV/atom in the tables), forces eV/Å (meV/Å in the tables),
RMSD Å.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from jaxmat import cli
from jaxmat.errors import JaxmatInputError
from jaxmat.files import write_atomically, write_json


def minimum_image_rmsd(positions, reference, cell) -> float:
    """RMSD (Å) between two sets of positions in one periodic cell, minimum image, mean displacement removed."""
    cell = np.asarray(cell)
    fractional = (np.asarray(positions) - np.asarray(reference)) @ np.linalg.inv(cell)
    fractional -= np.round(fractional)
    displacement = fractional @ cell
    displacement -= displacement.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(displacement**2, axis=1))))


def _read(path: Path):
    import ase.io

    return ase.io.read(path, index=":", format="extxyz") if path.exists() else None


TASKS = ("test", "in_distribution", "substitution")


def load_outputs(report: Path) -> dict:
    """The saved outputs of an evaluation: per task {model: frames} (tasks/models without output left out),
    the substitution starts and the substitution energy traces {model: [[eV per step]]}."""
    labels = list(json.loads((report / "evaluation.json").read_text())["models"])
    outputs = {"models": labels, "start": _read(report / "substitution" / "start.extxyz"), "traces": {}}
    for task in TASKS:
        frames = {label: _read(report / task / f"{label}.extxyz") for label in labels}
        outputs[task] = {label: f for label, f in frames.items() if f}
    annealed = {label: _read(report / "annealed" / f"{label}.extxyz") for label in labels}
    outputs["annealed"] = {label: f for label, f in annealed.items() if f}
    sro_path = report / "annealed" / "sro.json"
    outputs["anneal_sro"] = json.loads(sro_path.read_text()) if sro_path.exists() else None
    for label in labels:
        path = report / "substitution" / f"{label}_traces.json"
        if path.exists():
            outputs["traces"][label] = json.loads(path.read_text())["energies_eV"]
    return outputs


def test_metrics(frames) -> dict:
    """Energy per atom and force component errors of predictions (info pred_energy, arrays pred_forces) vs DFT."""
    n_atoms = np.array([len(a) for a in frames])
    energy_error = np.array([a.info["pred_energy"] - a.info["DFT_energy"] for a in frames]) / n_atoms
    force_error = np.concatenate([(a.arrays["pred_forces"] - a.arrays["DFT_forces"]).ravel() for a in frames])
    return {"frames": len(frames), "energy_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean(energy_error**2))),
            "energy_mae_meV_per_atom": 1000 * float(np.mean(np.abs(energy_error))),
            "force_rmse_meV_per_A": 1000 * float(np.sqrt(np.mean(force_error**2))),
            "force_mae_meV_per_A": 1000 * float(np.mean(np.abs(force_error)))}


def _steps(frames) -> dict:
    converged = [a for a in frames if a.info["status"] == "converged"]
    steps = [a.info["n_steps"] for a in converged]
    return {"structures": len(frames), "converged": len(converged), "convergence_ratio": len(converged) / len(frames),
            "failed": sum(a.info["status"] == "failed" for a in frames),
            "mean_steps_converged": float(np.mean(steps)) if steps else None,
            "median_steps_converged": float(np.median(steps)) if steps else None}


def in_distribution_metrics(frames) -> dict:
    """Convergence, RMSD to the DFT geometry (Å) and energy differences (meV/atom) of in-distribution relaxations."""
    ok = [a for a in frames if a.info["status"] != "failed"]
    rmsd = np.array([minimum_image_rmsd(a.positions, a.arrays["dft_positions"], a.cell[:]) for a in ok])
    vs_dft = np.array([(a.info["model_energy"] - a.info["DFT_energy"]) / len(a) for a in ok])
    vs_model_at_dft = np.array([(a.info["model_energy"] - a.info["model_energy_at_dft"]) / len(a) for a in ok])
    return {**_steps(frames), "rmsd_mean_A": float(rmsd.mean()), "rmsd_median_A": float(np.median(rmsd)),
            "rmsd_max_A": float(rmsd.max()),
            "energy_vs_dft_mean_meV_per_atom": 1000 * float(vs_dft.mean()),
            "energy_vs_dft_mae_meV_per_atom": 1000 * float(np.abs(vs_dft).mean()),
            "energy_vs_model_at_dft_geometry_mean_meV_per_atom": 1000 * float(vs_model_at_dft.mean())}


def substitution_metrics(frames, start=None) -> dict:
    """Convergence, steps, final energies (eV/atom) and reference-model energies of the final geometries (eV/atom)."""
    ok = [a for a in frames if a.info["status"] != "failed"]
    metrics = {**_steps(frames), "final_energy_mean_eV_per_atom": float(np.mean([a.info["model_energy"] / len(a) for a in ok]))}
    with_reference = [a for a in ok if "reference_energy" in a.info]
    if with_reference:
        metrics["reference_energy_final_mean_eV_per_atom"] = float(np.mean([a.info["reference_energy"] / len(a) for a in with_reference]))
        if start is not None:  # frames and starts are in the same (input) order
            lowering = [(a.info["reference_energy"] - s.info["reference_energy"]) / len(a) for a, s in zip(frames, start)
                        if a.info["status"] != "failed" and "reference_energy" in a.info and "reference_energy" in s.info]
            metrics["reference_energy_change_mean_meV_per_atom"] = 1000 * float(np.mean(lowering))
    return metrics


def annealed_metrics(annealed, finals) -> dict:
    """Per anneal temperature (K): relaxed energies (eV/atom, means) of the annealed arrangements and of the random starts
    of the same cells (their substitution relaxations), the mean difference (meV/atom) and on how many cells it is < 0."""
    pairs: dict = {}
    for atoms in annealed:
        start = finals[int(atoms.info["substitution_index"])]
        if atoms.info["status"] != "failed" and start.info["status"] != "failed":
            pairs.setdefault(float(atoms.info["temperature"]), []).append(
                (start.info["model_energy"] / len(start), atoms.info["model_energy"] / len(atoms)))
    table = {}
    for t, values in sorted(pairs.items()):
        random_start, after = np.array(values).T
        table[f"{t:g}"] = {"cells": len(values), "random_start_eV_per_atom": float(random_start.mean()),
                           "annealed_eV_per_atom": float(after.mean()), "difference_meV_per_atom": 1000 * float(np.mean(after - random_start)),
                           "lower": int(np.sum(after < random_start))}
    return table


def lowest_reference_counts(per_model: dict, tie_tolerance: float = 1e-4) -> dict:
    """For each model: on how many substitution structures its final geometry has the lowest reference energy
    (structures where the two lowest are within tie_tolerance eV are counted as ties)."""
    labels = list(per_model)
    n = len(per_model[labels[0]])
    counts = {label: 0 for label in labels}
    compared = ties = 0
    for i in range(n):
        values = {label: per_model[label][i].info.get("reference_energy") for label in labels
                  if per_model[label][i].info["status"] != "failed"}
        if len(values) == len(labels) and all(v is not None for v in values.values()):
            compared += 1
            ordered = sorted(values.values())
            if ordered[1] - ordered[0] < tie_tolerance:
                ties += 1
            else:
                counts[min(values, key=values.get)] += 1
    return {"compared": compared, "lowest": counts, "ties": ties, "tie_tolerance_eV": tie_tolerance}


def compute_metrics(outputs: dict) -> dict:
    """All report numbers from load_outputs(REPORT)."""
    labels, start, finals = outputs["models"], outputs["start"], outputs["substitution"]
    metrics: dict = {"models": labels,
                     "test": {label: test_metrics(frames) for label, frames in outputs["test"].items()},
                     "in_distribution": {label: in_distribution_metrics(frames) for label, frames in outputs["in_distribution"].items()},
                     "substitution": {label: substitution_metrics(frames, start) for label, frames in finals.items()}}
    if start and any("reference_energy" in a.info for a in start):
        metrics["substitution_start_reference_energy_mean_eV_per_atom"] = float(
            np.mean([a.info["reference_energy"] / len(a) for a in start if "reference_energy" in a.info]))
    metrics["annealed"] = {label: annealed_metrics(frames, finals[label]) for label, frames in outputs.get("annealed", {}).items()
                           if label in finals}
    if outputs.get("anneal_sro"):
        metrics["anneal_sro"] = outputs["anneal_sro"]
    if len(finals) == len(labels) and len(labels) > 1:
        metrics["substitution_lowest_reference_energy"] = lowest_reference_counts(finals)
    return metrics


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def make_plots(report: Path, outputs: dict) -> list[str]:
    """parity.png, steps_histogram.png, energy_traces.png in REPORT (those with data); returns the names."""
    from jaxmat.plotting import pyplot

    plt = pyplot()
    written = []
    test = outputs["test"]
    if test:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for label, frames in test.items():
            dft = np.array([a.info["DFT_energy"] / len(a) for a in frames])
            pred = np.array([a.info["pred_energy"] / len(a) for a in frames])
            axes[0].scatter(dft, pred, s=8, alpha=0.7, label=label)
            f_dft = np.concatenate([a.arrays["DFT_forces"].ravel() for a in frames])
            f_pred = np.concatenate([a.arrays["pred_forces"].ravel() for a in frames])
            axes[1].scatter(f_dft, f_pred, s=3, alpha=0.4, label=label)
        for ax, what in zip(axes, ("energy (eV/atom)", "force component (eV/Å)")):
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            lo, hi = min(x0, y0), max(x1, y1)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
            ax.set_xlabel(f"DFT {what}"), ax.set_ylabel(f"model {what}"), ax.legend()
        fig.suptitle("test split parity"), fig.tight_layout()
        fig.savefig(report / "parity.png", dpi=120), plt.close(fig)
        written.append("parity.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    any_steps = False
    for ax, task in zip(axes, ("in_distribution", "substitution")):
        for label, frames in outputs[task].items():
            any_steps = True
            steps = [a.info["n_steps"] for a in frames]
            ax.hist(steps, bins=np.linspace(0, max(steps) + 1, 21), alpha=0.5, label=label)
        ax.set_xlabel("optimizer steps"), ax.set_ylabel("structures"), ax.set_title(task.replace("_", "-")), ax.legend()
    if any_steps:
        fig.tight_layout(), fig.savefig(report / "steps_histogram.png", dpi=120)
        written.append("steps_histogram.png")
    plt.close(fig)
    traces, start = outputs["traces"], outputs["start"]
    if traces:
        fig, axes = plt.subplots(1, len(traces), figsize=(5 * len(traces), 3.6), squeeze=False)
        for ax, (label, energies) in zip(axes[0], traces.items()):
            for i, trace in enumerate(energies):
                if trace:
                    n = len(start[i]) if start else 1
                    ax.plot(1000 * (np.array(trace) - trace[-1]) / n, lw=0.8)
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_xlabel("step"), ax.set_ylabel("E - E_final (meV/atom)"), ax.set_title(f"substitution: {label}")
        fig.tight_layout(), fig.savefig(report / "energy_traces.png", dpi=120), plt.close(fig)
        written.append("energy_traces.png")
    return written


def render(metrics: dict, evaluation: dict, plots) -> str:
    labels = metrics["models"]
    lines = ["# HEO evaluation report", "",
             "Models: " + ", ".join(f"`{label}` ({evaluation['models'][label]})" for label in labels), "",
             f"Data: `{evaluation['data']}`; substitution structures: `{evaluation['structures']}`; "
             f"backend {evaluation['config']['backend']}, {evaluation['config']['dtype']}; "
             f"reference model: {evaluation['config']['reference']}.", ""]
    left_out = {task: info.get("left_out") for task, info in evaluation.get("left_out", {}).items() if info.get("left_out")}
    if left_out:
        lines += [f"Frames left out because a model lacks their elements (task: model: element: frames): {left_out}", ""]
    if metrics["test"]:
        lines += ["## Test-split errors", "", "| model | frames | energy RMSE (meV/atom) | energy MAE (meV/atom) | force RMSE (meV/Å) | force MAE (meV/Å) |",
                  "|---|---|---|---|---|---|"]
        for label, m in metrics["test"].items():
            lines.append(f"| {label} | {m['frames']} | {_fmt(m['energy_rmse_meV_per_atom'])} | {_fmt(m['energy_mae_meV_per_atom'])} | "
                         f"{_fmt(m['force_rmse_meV_per_A'])} | {_fmt(m['force_mae_meV_per_A'])} |")
        lines.append("")
    if metrics["in_distribution"]:
        c = evaluation["config"]["in_distribution"]
        lines += ["## In-distribution relaxation", "",
                  f"{c['count']} DFT structures of the {c['split']} split rattled by {c['rattle']} Å, relaxed at fixed cell "
                  f"({c['optimizer']}, fmax {c['fmax']} eV/Å, at most {c['max_steps']} steps).", "",
                  "| model | converged | mean steps | RMSD mean (Å) | RMSD median (Å) | E - E_DFT mean (meV/atom) | abs(E - E_DFT) mean (meV/atom) | E - E_model(DFT geometry) (meV/atom) |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, m in metrics["in_distribution"].items():
            lines.append(f"| {label} | {m['converged']}/{m['structures']} | {_fmt(m['mean_steps_converged'])} | {_fmt(m['rmsd_mean_A'], 3)} | "
                         f"{_fmt(m['rmsd_median_A'], 3)} | {_fmt(m['energy_vs_dft_mean_meV_per_atom'])} | "
                         f"{_fmt(m['energy_vs_dft_mae_meV_per_atom'])} | {_fmt(m['energy_vs_model_at_dft_geometry_mean_meV_per_atom'])} |")
        lines.append("")
    if metrics["substitution"]:
        c = evaluation["config"]["substitution"]
        lines += ["## Random substitution", "",
                  f"Rock-salt supercells relaxed with each model ({c['optimizer']}, fmax {c['fmax']} eV/Å, at most "
                  f"{c['max_steps']} steps, cell relaxed: {c['relax_cell']}); reference energies from "
                  f"{evaluation['config']['reference']} at each final geometry.", "",
                  "| model | converged | ratio | mean steps | median steps | final E (eV/atom) | reference E of final (eV/atom) | reference E change (meV/atom) |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, m in metrics["substitution"].items():
            lines.append(f"| {label} | {m['converged']}/{m['structures']} | {_fmt(m['convergence_ratio'], 2)} | {_fmt(m['mean_steps_converged'])} | "
                         f"{_fmt(m['median_steps_converged'])} | {_fmt(m['final_energy_mean_eV_per_atom'], 4)} | "
                         f"{_fmt(m.get('reference_energy_final_mean_eV_per_atom'), 4)} | {_fmt(m.get('reference_energy_change_mean_meV_per_atom'))} |")
        lines.append("")
        if "substitution_start_reference_energy_mean_eV_per_atom" in metrics:
            lines.append(f"Reference energy of the starting structures: "
                         f"{metrics['substitution_start_reference_energy_mean_eV_per_atom']:.4f} eV/atom (mean).")
        lowest = metrics.get("substitution_lowest_reference_energy")
        if lowest:
            lines.append(f"Lowest reference energy among the models' final geometries, over {lowest['compared']} structures: "
                         + ", ".join(f"{k} {v}" for k, v in lowest["lowest"].items()) + f", ties {lowest['ties']}.")
        lines.append("")
    lines += _annealed_lines(metrics, evaluation)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    timings = evaluation.get("timings")
    if timings:
        lines += ["Wall time (s): " + ", ".join(f"{k.replace('_seconds', '')} {v:.0f}" for k, v in timings.items()), ""]
    lines += ["All numbers are recomputed from the files in test/, in_distribution/, substitution/ and annealed/ by "
              "`python -m jaxmat.heo.report REPORT`.", ""]
    return "\n".join(lines)


def _annealed_lines(metrics: dict, evaluation: dict) -> list[str]:
    """The report's section on an anneal (evaluate --anneal): relaxed energies per temperature and the alpha table."""
    lines = []
    if metrics.get("annealed"):
        lines += ["## Annealed vs random starts", "",
                  f"The lowest-energy arrangement of every replica of `{evaluation.get('anneal')}` relaxed as the random "
                  "substitution structures are, against the relaxed random start of the same cell.", "",
                  "| model | anneal T (K) | cells | random start E (eV/atom) | annealed E (eV/atom) | difference (meV/atom) | annealed lower |",
                  "|---|---|---|---|---|---|---|"]
        for label, table in metrics["annealed"].items():
            lines += [f"| {label} | {t} | {m['cells']} | {m['random_start_eV_per_atom']:.4f} | {m['annealed_eV_per_atom']:.4f} | "
                      f"{_fmt(m['difference_meV_per_atom'], 2)} | {m['lower']}/{m['cells']} |" for t, m in table.items()]
        lines.append("")
    sro = metrics.get("anneal_sro")
    if sro:
        temperatures = sorted({t for entry in sro["alpha"].values() for t in entry}, key=float)
        lines += ["Warren-Cowley alpha of the anneal (first cation shell; mean ± spread over replicas of the sweep average over "
                  "the run's second half; 0: random solution):", "",
                  "| pair | " + " | ".join(f"{t} K" for t in temperatures) + " |", "|---|" + "---|" * len(temperatures)]
        for pair, entry in sro["alpha"].items():
            cells = [entry[t]["second_half"] for t in temperatures]
            lines.append(f"| {pair} | " + " | ".join("–" if c["mean"] is None else f"{c['mean']:.3f} ± {c['spread']:.3f}" for c in cells) + " |")
        lines.append("")
    return lines


def write_report(report) -> Path:
    """metrics.json, plots and report.md of REPORT from its raw outputs; returns the report.md path."""
    report = Path(report)
    evaluation = json.loads((report / "evaluation.json").read_text())
    outputs = load_outputs(report)
    metrics = compute_metrics(outputs)
    plots = make_plots(report, outputs)
    write_json(report / "metrics.json", metrics, indent=2)
    return write_atomically(report / "report.md", lambda tmp: tmp.write_text(render(metrics, evaluation, plots)))


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.heo.report", "Recompute the tables, metrics.json, plots and report.md of an HEO evaluation.")
    parser.add_argument("report", help="a folder written by python -m jaxmat.heo.evaluate")
    args = parser.parse_args(argv)
    if not (Path(args.report) / "evaluation.json").exists():
        raise JaxmatInputError(f"{args.report} holds no evaluation.json: not a folder written by python -m jaxmat.heo.evaluate")
    print(f"wrote {write_report(args.report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
