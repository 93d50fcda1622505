"""Curate high-entropy-oxide frames from LeMat-Bulk into seeded train/val/test extxyz splits.

    python -m jaxmat.heo.curate --source lemat|embedded:heo|PATH --out DIR [--seed 0] [--split 0.7,0.2,0.1]
        [--min-entropy 1.5] [--equimolar] [--no-noble-metals] [--limit N]

``lemat`` streams ``LeMaterial/LeMat-Bulk`` (config ``compatible_pbe``) with Hugging Face ``datasets``;
``embedded:heo`` the 1,292 LeMat-Bulk HEO frames shipped with jaxmat (CC-BY-4.0, LeMaterial);
PATH is a local parquet file or folder in the LeMat-Bulk schema, or an extxyz file of frames with
``DFT_energy`` / ``DFT_forces`` (or ``energy`` / ``forces``). The HEO filter keeps rows that contain O,
have at least 5 elements, whose other elements are all metals, and that carry finite forces of the right
shape; optional: configurational entropy of the cation sublattice >= MIN_ENTROPY x R, equimolar cations,
no noble metals. DIR gets train/val/test.extxyz (``DFT_energy`` in info, ``DFT_forces`` in arrays, plus
``immutable_id`` and ``source``), summary.json (counts per source, rejections per reason, split sizes)
and plots. DIR is written under DIR.partial and renamed when complete.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from jaxmat import cli
from jaxmat.errors import JaxmatInputError

LEMAT_CURATION_COLUMNS = ("species_at_sites", "cartesian_site_positions", "lattice_vectors", "energy", "forces", "immutable_id")
NOBLE_METALS = frozenset({"Ru", "Rh", "Pd", "Ag", "Os", "Ir", "Pt", "Au"})


@dataclass(frozen=True)
class HEOFilter:
    """The HEO selection. min_entropy in units of R (None: no entropy cut)."""

    min_elements: int = 5
    min_entropy: float | None = None
    equimolar: bool = False
    exclude_noble_metals: bool = False


def source_of(immutable_id: str) -> str:
    """mp / oqmd / alexandria from a LeMat-Bulk immutable_id (Alexandria ids contain 'agm')."""
    text = str(immutable_id).lower()
    if "oqmd" in text:
        return "oqmd"
    if "agm" in text:
        return "alexandria"
    if "mp" in text:
        return "mp"
    return "other"


def cation_entropy(species) -> float:
    """Ideal configurational entropy of the non-O sites, in units of R: -sum x ln x."""
    counts = Counter(s for s in species if s != "O")
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def _is_metal(symbol: str) -> bool:
    from pymatgen.core import Element

    try:
        return bool(Element(symbol).is_metal)
    except ValueError:
        raise JaxmatInputError(f"unknown element {symbol!r}") from None


def rejection_reason(row: dict, heo_filter: HEOFilter = HEOFilter()) -> str | None:
    """None when the row is an HEO frame worth keeping, otherwise the first failed criterion."""
    species = list(row.get("species_at_sites") or [])
    if not species:
        return "no sites"
    elements = set(species)
    if any(not _known_element(e) for e in elements):
        return "unknown element"
    if "O" not in elements:
        return "no oxygen"
    if len(elements) < heo_filter.min_elements:
        return f"fewer than {heo_filter.min_elements} elements"
    if any(not _is_metal(e) for e in elements - {"O"}):
        return "non-metal other than O"
    forces = row.get("forces")
    if forces is None or len(forces) == 0:
        return "no forces"
    forces = np.asarray(forces, dtype=float)
    positions = np.asarray(row.get("cartesian_site_positions"), dtype=float)
    if forces.shape != (len(species), 3) or positions.shape != (len(species), 3):
        return "inconsistent array lengths"
    energy = row.get("energy")
    if energy is None or not np.isfinite(energy) or not np.all(np.isfinite(forces)) or not np.all(np.isfinite(positions)):
        return "non-finite energy, forces or positions"
    if heo_filter.exclude_noble_metals and elements & NOBLE_METALS:
        return "noble metal"
    if heo_filter.min_entropy is not None and cation_entropy(species) < heo_filter.min_entropy - 1e-12:
        return f"cation entropy below {heo_filter.min_entropy} R"
    if heo_filter.equimolar and len(set(Counter(s for s in species if s != "O").values())) > 1:
        return "cations not equimolar"
    return None


def _known_element(symbol: str) -> bool:
    from ase.data import atomic_numbers

    return symbol in atomic_numbers


def row_to_atoms(row: dict):
    """ase.Atoms with DFT_energy (eV) in info and DFT_forces (eV/Å) in arrays, plus id and source."""
    from jaxmat.data.sources import lemat_row_to_record
    from jaxmat.data.structures import to_ase

    atoms = to_ase(lemat_row_to_record(row))
    del atoms.info["id"]  # kept below as immutable_id, as LeMat names it
    atoms.info["DFT_energy"] = float(row["energy"])
    atoms.arrays["DFT_forces"] = np.asarray(row["forces"], float)
    atoms.info["immutable_id"] = str(row.get("immutable_id", ""))
    atoms.info["source"] = source_of(row.get("immutable_id", ""))
    return atoms


def atoms_to_row(atoms, index: int) -> dict:
    """The LeMat-Bulk columns the curation reads, from an extxyz frame (DFT_* or plain energy/forces keys)."""
    forces = atoms.arrays.get("DFT_forces", atoms.arrays.get("forces"))
    if forces is None and atoms.calc is not None and "forces" in atoms.calc.results:
        forces = atoms.calc.results["forces"]
    energy = atoms.info.get("DFT_energy", atoms.info.get("energy"))
    if energy is None and atoms.calc is not None:
        energy = atoms.calc.results.get("energy")
    return {"species_at_sites": atoms.get_chemical_symbols(), "cartesian_site_positions": atoms.positions.tolist(),
            "lattice_vectors": np.asarray(atoms.cell[:]).tolist(), "energy": energy,
            "forces": [] if forces is None else np.asarray(forces).tolist(),
            "immutable_id": str(atoms.info.get("immutable_id", f"frame-{index}"))}


def iter_rows(source: str):
    """Rows in the LeMat-Bulk schema from 'lemat' (Hugging Face), a parquet file/folder, 'embedded:heo' or an extxyz file."""
    if source == "lemat" or str(source).endswith(".parquet") or Path(source).is_dir():
        from jaxmat.data.sources import iter_lemat_rows

        first = True
        for row in iter_lemat_rows(None if source == "lemat" else source):
            if first:
                missing = [c for c in LEMAT_CURATION_COLUMNS if c not in row]
                if missing:
                    raise JaxmatInputError(f"LeMat data at {source} lacks column(s) {missing} needed for HEO curation "
                                           f"(found {sorted(row)})")
                first = False
            yield row
        return
    if source == "embedded:heo":  # the 1,292 LeMat-Bulk HEO frames shipped with jaxmat (CC-BY-4.0, LeMaterial)
        from jaxmat.data.sources import embedded_path

        source = embedded_path(source)
    path = Path(source)
    if not path.exists():
        raise JaxmatInputError(f"curation source {source} not found (use 'lemat', 'embedded:heo', a parquet file/folder or an extxyz file)")
    import ase.io

    for index, atoms in enumerate(ase.io.iread(path, index=":")):
        yield atoms_to_row(atoms, index)


def split_indices(n: int, fractions=(0.7, 0.2, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded shuffle of range(n) cut into train/val/test by the fractions (sizes rounded, test takes the rest)."""
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or np.any(fractions < 0) or abs(fractions.sum() - 1) > 1e-9:
        raise JaxmatInputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def curate(source: str, out_dir, heo_filter: HEOFilter = HEOFilter(), seed: int = 0, fractions=(0.7, 0.2, 0.1),
           limit: int | None = None, progress: bool = True, plots: bool = True) -> dict:
    """Filter, split and write; returns the summary (also in OUT/summary.json)."""
    import ase.io
    from tqdm import tqdm

    kept, rejected, scanned = [], Counter(), 0
    for row in tqdm(iter_rows(source), desc="scanning", unit=" rows", disable=not progress, file=sys.stderr):
        scanned += 1
        reason = rejection_reason(row, heo_filter)
        if reason is None:
            kept.append(row_to_atoms(row))
            if limit is not None and len(kept) >= limit:
                break
        else:
            rejected[reason] += 1
    if not kept:
        raise JaxmatInputError(f"no row of {source} passed the HEO filter ({scanned} rows scanned; rejected: "
                               f"{dict(rejected.most_common()) or 'none'})")
    splits = split_indices(len(kept), fractions, seed)
    out_dir = Path(out_dir).absolute()
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, indices in splits.items():
        ase.io.write(partial / f"{name}.extxyz", [kept[i] for i in indices], format="extxyz")
    summary = {
        "source": str(source), "seed": seed, "fractions": list(fractions), "filter": asdict(heo_filter),
        "rows_scanned": scanned, "rows_kept": len(kept), "rejected": dict(rejected.most_common()),
        "per_source": dict(Counter(a.info["source"] for a in kept)),
        "splits": {name: int(len(indices)) for name, indices in splits.items()},
        "split_ids": {name: [kept[i].info["immutable_id"] for i in indices] for name, indices in splits.items()},
    }
    if plots:
        from jaxmat.heo.plots import curation_plots

        summary["plots"] = curation_plots(kept, partial)
    (partial / "summary.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return summary


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.heo.curate", __doc__)
    parser.add_argument("--source", required=True, help="lemat, a LeMat-schema parquet file/folder, embedded:heo (frames shipped with jaxmat) or an extxyz file")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="0.7,0.2,0.1", help="train,val,test fractions")
    parser.add_argument("--min-elements", type=int, default=5)
    parser.add_argument("--min-entropy", type=float, help="minimum cation configurational entropy in units of R (e.g. 1.5)")
    parser.add_argument("--equimolar", action="store_true", help="keep only equimolar cation compositions")
    parser.add_argument("--no-noble-metals", action="store_true", help="drop rows with Ru Rh Pd Ag Os Ir Pt Au")
    parser.add_argument("--limit", type=int, help="stop after this many kept rows")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise JaxmatInputError(f"--split {args.split!r}: three numbers separated by commas, e.g. 0.7,0.2,0.1") from None
    summary = curate(args.source, args.out, HEOFilter(args.min_elements, args.min_entropy, args.equimolar, args.no_noble_metals),
                     args.seed, fractions, args.limit, plots=not args.no_plots)
    print(f"kept {summary['rows_kept']} of {summary['rows_scanned']} rows ({summary['per_source']}); "
          f"splits {summary['splits']}; rejected {summary['rejected']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
