"""Does the learned spread grow with the number of polymorphs? (PolySRL's central claim.) The command
is ``python -m jaxmat.analyze_uncertainty`` (:mod:`jaxmat.analyze_uncertainty`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from jaxmat.errors import JaxmatInputError
from jaxmat.files import write_atomically, write_json


def count_polymorphs(records) -> dict[str, tuple[int, int]]:
    """formula -> (number of structures, number of distinct polymorphs by StructureMatcher)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from jaxmat.data.structures import to_pymatgen

    by_formula = defaultdict(list)
    for record in records:
        by_formula[record.formula].append(record)
    matcher = StructureMatcher()
    counts = {}
    for formula, group in by_formula.items():
        if len(group) == 1:
            counts[formula] = (1, 1)
        else:
            counts[formula] = (len(group), len(matcher.group_structures([to_pymatgen(r) for r in group])))
    return counts


def spearman_with_bootstrap(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Spearman rho of (x, y) and a percentile bootstrap interval over rows."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(x), len(x))
        if np.ptp(x[rows]) > 0 and np.ptp(y[rows]) > 0:
            samples.append(spearmanr(x[rows], y[rows]).statistic)
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2]) if samples else (np.nan, np.nan)
    return rho, float(low), float(high)


def analyze(workdir, out=None, n_boot: int = 1000, seed: int = 0) -> dict:
    from jaxmat.data.sources import load_structures
    from jaxmat.polysrl.api import load_encoder

    workdir = Path(workdir)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    data = config["data"]
    records = load_structures(data["source"], data.get("path"), data.get("limit")).records
    if not records:
        raise JaxmatInputError(f"no structures from the run's data source {data['source']!r}")
    counts = count_polymorphs(records)
    formulas = sorted(counts)
    _, sigma = load_encoder(workdir).embed(formulas)
    mean_sigma = sigma.mean(axis=1)
    polymorphs = np.array([counts[f][1] for f in formulas])
    rho, low, high = spearman_with_bootstrap(polymorphs, mean_sigma, n_boot, seed)
    summary = {"n_formulas": len(formulas), "n_structures": len(records),
               "formulas_with_several_polymorphs": int(np.sum(polymorphs > 1)),
               "spearman_rho": rho, "ci95": [low, high], "bootstrap": n_boot}
    out = Path(out) if out else workdir / "uncertainty"
    rows = "".join(f"{f},{counts[f][0]},{counts[f][1]},{s:.8g}\n" for f, s in zip(formulas, mean_sigma))
    write_atomically(out / "polymorph_sigma.csv", lambda tmp: tmp.write_text("formula,n_structures,n_polymorphs,mean_sigma\n" + rows))
    write_json(out / "summary.json", summary, indent=2)
    _box_plot(out / "sigma_by_polymorphs.png", polymorphs, mean_sigma, rho, low, high)
    return summary


def _box_plot(path, polymorphs, mean_sigma, rho, low, high):
    from jaxmat.plotting import pyplot

    plt = pyplot()

    levels = sorted(set(polymorphs.tolist()))
    labels = [str(k) if k < 4 else "4+" for k in levels]
    groups: dict[str, list] = defaultdict(list)
    for k, s in zip(polymorphs, mean_sigma):
        groups[str(k) if k < 4 else "4+"].append(s)
    names = list(dict.fromkeys(labels))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.boxplot([groups[n] for n in names], tick_labels=[f"{n}\n(n={len(groups[n])})" for n in names])
    ax.set_xlabel("distinct polymorphs of the formula")
    ax.set_ylabel("mean sigma of its embedding")
    ax.set_yscale("log")
    ax.set_title(f"Spearman rho {rho:.3f} [{low:.3f}, {high:.3f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
