"""Plots of the HEO pipeline (matplotlib, Agg): the curation overview, an anneal's energies and short-range order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from jaxmat.plotting import pyplot


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
    plt = pyplot()
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


def anneal_plots(result, table: dict, out) -> None:
    """energy.png (energy per atom vs sweep per replica) and sro.png (Warren-Cowley alpha vs temperature, ``table`` of
    :func:`jaxmat.heo.anneal.sro_table`) of an :class:`jaxmat.heo.anneal.AnnealResult` in the folder ``out``."""
    from jaxmat.files import write_atomically

    plt = pyplot()
    out = Path(out)
    n_atoms = np.array([len(a) for a in result.last], float)
    figure, axis = plt.subplots(figsize=(6, 4))
    sweep = np.arange(1, len(result.trace_energy) + 1)
    colors = {t: plt.cm.coolwarm(k / max(len(set(result.temperature)) - 1, 1)) for k, t in enumerate(sorted(set(result.temperature)))}
    for r in range(len(result.last)):
        axis.plot(sweep, result.trace_energy[:, r] / n_atoms[r], color=colors[result.temperature[r]], lw=0.8,
                  label=f"{result.temperature[r]:g} K" if r < len(colors) else None)
    axis.set(xlabel="sweep", ylabel="energy (eV/atom)")
    axis.legend(fontsize=8)
    write_atomically(out / "energy.png", lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 4))
    temperatures = sorted(colors)
    for pair, entry in table.items():
        means = [entry[f"{t:g}"]["second_half"]["mean"] for t in temperatures]
        spreads = [entry[f"{t:g}"]["second_half"]["spread"] for t in temperatures]
        means, spreads = (np.array([np.nan if v is None else v for v in x]) for x in (means, spreads))
        axis.errorbar(temperatures, means, yerr=spreads, marker="o", capsize=3, label=pair)
    axis.axhline(0.0, color="k", lw=0.5)
    axis.set(xlabel="temperature (K)", ylabel="Warren-Cowley alpha (first cation shell)")
    axis.legend(fontsize=6, ncol=3)
    write_atomically(out / "sro.png", lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)
