"""Plots of the HEO pipeline (matplotlib, Agg): curation overview, parity plots, relaxation traces."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def composition_features(frames) -> tuple[np.ndarray, list[str]]:
    """Atomic-fraction vectors over the elements present in the frames."""
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    column = {e: i for i, e in enumerate(elements)}
    features = np.zeros((len(frames), len(elements)))
    for row, atoms in enumerate(frames):
        for symbol, count in Counter(atoms.get_chemical_symbols()).items():
            features[row, column[symbol]] = count / len(atoms)
    return features, elements


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """UMAP when umap-learn is installed (and there are enough points), else PCA."""
    if len(features) >= 20:
        try:
            import umap

            return umap.UMAP(n_components=2, random_state=seed).fit_transform(features), "UMAP"
        except ImportError:
            pass
    from sklearn.decomposition import PCA

    n = min(2, features.shape[0], features.shape[1])
    coords = PCA(n_components=n, random_state=seed).fit_transform(features)
    if coords.shape[1] < 2:
        coords = np.concatenate([coords, np.zeros((len(coords), 2 - coords.shape[1]))], axis=1)
    return coords, "PCA"


def curation_plots(frames, out_dir) -> list[str]:
    """elements_per_sample.png, element_frequency.png, composition_map.png in OUT_DIR; returns the names."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    n_elements = [len(set(a.get_chemical_symbols())) for a in frames]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(n_elements, bins=np.arange(min(n_elements), max(n_elements) + 2) - 0.5, color="tab:blue")
    ax.set_xlabel("elements per sample"), ax.set_ylabel("samples"), ax.set_title(f"{len(frames)} HEO frames")
    fig.tight_layout(), fig.savefig(out_dir / "elements_per_sample.png", dpi=120), plt.close(fig)

    frequency = Counter(e for a in frames for e in set(a.get_chemical_symbols())).most_common()
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(frequency)), 3.5))
    ax.bar([e for e, _ in frequency], [c for _, c in frequency], color="tab:green")
    ax.set_ylabel("samples containing"), ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.tight_layout(), fig.savefig(out_dir / "element_frequency.png", dpi=120), plt.close(fig)

    features, _ = composition_features(frames)
    coords, method = embed_2d(features)
    sources = [a.info.get("source", "other") for a in frames]
    fig, ax = plt.subplots(figsize=(5, 4))
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources])
        ax.scatter(coords[mask, 0], coords[mask, 1], s=6, label=f"{source} ({mask.sum()})")
    ax.set_title(f"{method} of compositions"), ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out_dir / "composition_map.png", dpi=120), plt.close(fig)
    return ["elements_per_sample.png", "element_frequency.png", "composition_map.png"]


def parity_plot(reference, predicted, path, label: str, unit: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    reference, predicted = np.asarray(reference).ravel(), np.asarray(predicted).ravel()
    ax.scatter(reference, predicted, s=4, alpha=0.6)
    lo, hi = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"DFT {label} ({unit})"), ax.set_ylabel(f"model {label} ({unit})")
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def energy_traces(traces: dict, path, title: str):
    """traces: model name -> list of per-structure energy-per-atom sequences (eV/atom)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, sequences) in enumerate(traces.items()):
        for j, seq in enumerate(sequences):
            seq = np.asarray(seq)
            ax.plot(np.arange(len(seq)), seq - seq[-1], color=colors[i % len(colors)], alpha=0.5, lw=0.8,
                    label=name if j == 0 else None)
    ax.set_yscale("symlog", linthresh=1e-4), ax.set_xlabel("step"), ax.set_ylabel("E - E_final (eV/atom)")
    ax.set_title(title), ax.legend()
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def step_histogram(steps: dict, path, max_steps: int):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(0, max_steps + 1, 21)
    for name, values in steps.items():
        ax.hist(values, bins=bins, alpha=0.6, label=name)
    ax.set_xlabel("optimizer steps"), ax.set_ylabel("structures"), ax.legend()
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)
