"""Structure data sources behind one interface: ``load_structures(source, path=...)``.

Sources
  embedded        the structures shipped in the package (Matbench phonons MP structures + LeMat-Bulk HEO frames)
  embedded:mp     only the 1,265 Materials Project structures of matbench_phonons
  embedded:heo    only the 1,292 LeMat-Bulk HEO frames (CC-BY-4.0, LeMaterial)
  file            a local file or folder: extxyz/xyz, a folder of CIFs, pymatgen/matbench JSON (.json/.json.gz)
  lemat           LeMat-Bulk through Hugging Face ``datasets`` (streamed), or a local parquet in its schema (path=)
  mp              Materials Project through ``mp-api`` (needs an API key and network)

Every source yields StructureRecord objects. Bad entries (no atoms, non-finite coordinates,
unknown elements) are skipped and counted, never silently dropped.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from jaxmat.data.structures import (
    StructureRecord,
    from_ase,
    from_pymatgen,
    make_record,
    validate_structure,
)
from jaxmat.errors import JaxmatInputError
from jaxmat.resources import resource_path

log = logging.getLogger(__name__)

LEMAT_REPO = "LeMaterial/LeMat-Bulk"
LEMAT_REQUIRED_COLUMNS = ("lattice_vectors", "cartesian_site_positions", "species_at_sites")


@dataclass
class LoadReport:
    """What a source produced: records kept and entries skipped (id, reason)."""

    records: list[StructureRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.records)} structures loaded, {len(self.skipped)} skipped"


def _collect(entries: Iterable[Callable[[], StructureRecord]], ids: Iterable[str], limit: int | None) -> LoadReport:
    report = LoadReport()
    for make, entry_id in zip(entries, ids):
        if limit is not None and len(report.records) >= limit:
            break
        try:
            record = make()
            validate_structure(record)
        except JaxmatInputError as exc:
            report.skipped.append((entry_id, str(exc)))
            continue
        report.records.append(record)
    for entry_id, reason in report.skipped[:20]:
        log.warning("skipped %s: %s", entry_id, reason)
    if report.skipped:
        log.warning("%d entries skipped in total", len(report.skipped))
    return report


# --- readers -------------------------------------------------------------------------------------


def read_extxyz(path, source: str | None = None) -> Iterator[tuple[str, Callable[[], StructureRecord]]]:
    """(id, record factory) for each frame of an extxyz/xyz file (gzip allowed)."""
    import ase.io

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        text = fh.read()  # ase seeks while reading; seeking in a gzip stream is slow
    frames = ase.io.read(io.StringIO(text), index=":", format="extxyz")
    stem = path.name.split(".")[0]
    for index, atoms in enumerate(frames):
        frame_id = str(atoms.info.get("id", f"{stem}:{index}"))
        yield frame_id, (lambda a=atoms, i=frame_id: from_ase(a, i, source or str(path)))


def read_pymatgen_json(path, source: str | None = None) -> Iterator[tuple[str, Callable[[], StructureRecord]]]:
    """Structures from JSON: a list of pymatgen Structure dicts, a dict id -> Structure dict, or a
    pandas "split" frame with a ``structure`` column (Matbench)."""
    from pymatgen.core import Structure

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        payload = json.load(fh)
    if isinstance(payload, dict) and {"columns", "data"} <= set(payload):
        column = payload["columns"].index("structure")
        index = payload.get("index", range(len(payload["data"])))
        items = [(f"{path.name.split('.')[0]}:{i}", row[column]) for i, row in zip(index, payload["data"])]
    elif isinstance(payload, dict) and payload.get("@class") == "Structure":
        items = [(path.stem, payload)]
    elif isinstance(payload, dict):
        items = list(payload.items())
    elif isinstance(payload, list):
        items = [(f"{path.name.split('.')[0]}:{i}", d) for i, d in enumerate(payload)]
    else:
        raise JaxmatInputError(f"{path}: JSON is neither a structure list, a dict of structures nor a Matbench frame")

    def factory(item_id, struct_dict):
        def make():
            try:
                structure = Structure.from_dict(struct_dict)
            except Exception as exc:
                raise JaxmatInputError(f"entry {item_id!r} is not a pymatgen Structure: {exc}") from None
            return from_pymatgen(structure, str(item_id), source or str(path))

        return make

    for item_id, struct_dict in items:
        yield str(item_id), factory(item_id, struct_dict)


def read_cif_folder(path, source: str | None = None) -> Iterator[tuple[str, Callable[[], StructureRecord]]]:
    """One structure per ``*.cif`` file of a folder (sorted by name)."""
    from pymatgen.core import Structure

    files = sorted(Path(path).glob("*.cif"))
    if not files:
        raise JaxmatInputError(f"folder {path} holds no .cif files")

    def factory(cif):
        def make():
            try:
                structure = Structure.from_file(cif)
            except Exception as exc:
                raise JaxmatInputError(f"CIF {cif.name} could not be read: {exc}") from None
            return from_pymatgen(structure, cif.stem, source or str(path))

        return make

    for cif in files:
        yield cif.stem, factory(cif)


def lemat_row_to_record(row: dict, source: str = "lemat") -> StructureRecord:
    """One LeMat-Bulk row (OPTIMADE-style columns) -> StructureRecord."""
    from jaxmat.data.elements import atomic_number

    missing = [c for c in LEMAT_REQUIRED_COLUMNS if c not in row]
    if missing:
        raise JaxmatInputError(f"LeMat row lacks column(s) {missing}")
    row_id = str(row.get("immutable_id", "?"))
    try:
        numbers = [atomic_number(s) for s in row["species_at_sites"]]
    except KeyError as exc:
        raise JaxmatInputError(f"LeMat row {row_id}: {exc.args[0]}") from None
    return make_record(row_id, numbers, row["cartesian_site_positions"], row["lattice_vectors"], True, source)


def iter_lemat_rows(path=None, config: str = "compatible_pbe", streaming: bool = True) -> Iterator[dict]:
    """Rows of LeMat-Bulk: from the Hugging Face hub (path None) or a local parquet file/folder in its schema."""
    import datasets

    if path is None:
        dataset = datasets.load_dataset(LEMAT_REPO, config, split="train", streaming=streaming)
    else:
        path = Path(path)
        files = sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else [str(path)]
        if not files:
            raise JaxmatInputError(f"no parquet files at {path}")
        dataset = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    columns = dataset.column_names if getattr(dataset, "column_names", None) else None
    if columns is not None:
        missing = [c for c in LEMAT_REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise JaxmatInputError(f"LeMat data at {path or LEMAT_REPO} lacks required column(s) {missing}")
    yield from dataset


def mp_docs_to_factories(docs) -> Iterator[tuple[str, Callable[[], StructureRecord]]]:
    """Materials Project summary docs (objects or dicts with ``material_id`` and ``structure``) -> factories."""
    for doc in docs:
        get = doc.get if isinstance(doc, dict) else lambda k, d=doc: getattr(d, k, None)
        mp_id, structure = str(get("material_id")), get("structure")
        yield mp_id, (lambda s=structure, i=mp_id: from_pymatgen(s, i, "materials_project"))


def fetch_mp_docs(api_key: str | None = None, **query):
    """Query the Materials Project summary endpoint (needs ``pip install jaxmat[mp]``, a key and network)."""
    try:
        from mp_api.client import MPRester
    except ImportError:
        raise JaxmatInputError("data.source=mp needs the optional dependency mp-api: pip install 'jaxmat[mp]'") from None
    with MPRester(api_key) as rester:
        return rester.materials.summary.search(fields=["material_id", "structure", "formula_pretty"], **query)


# --- the one entry point --------------------------------------------------------------------------


def _pairs_to_report(pairs, limit):
    pairs = list(pairs) if limit is None else _take_lazily(pairs, limit)
    return _collect((make for _, make in pairs), (i for i, _ in pairs), limit)


def _take_lazily(pairs, limit):
    # keep some headroom for skipped entries without materialising a whole hub dataset
    out = []
    for pair in pairs:
        out.append(pair)
        if len(out) >= 2 * limit + 100:
            break
    return out


EMBEDDED = {  # name -> (packaged file, reader): the one table of data shipped inside jaxmat
    "embedded:mp": ("matbench_phonons.json.gz", read_pymatgen_json),
    "embedded:heo": ("lemat_heo_valid.xyz.gz", read_extxyz),
}


def embedded_path(name: str) -> Path:
    """The packaged file behind an embedded source name ('embedded:mp', 'embedded:heo')."""
    if name not in EMBEDDED:
        raise JaxmatInputError(f"unknown embedded data {name!r}: use {', '.join(EMBEDDED)}")
    return resource_path(EMBEDDED[name][0])


def read_atoms(spec) -> list:
    """ase.Atoms from an embedded source name or a structure file in any format ase.io.read knows.
    A missing, empty or unreadable file is an input error naming the file."""
    from jaxmat.data.structures import to_ase

    if str(spec) in EMBEDDED:
        return [to_ase(r) for r in load_structures(str(spec)).records]
    import ase.io

    path = Path(spec)
    if not path.is_file():
        raise JaxmatInputError(f"structure file {spec} not found (or use {', '.join(EMBEDDED)})")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as error:  # ASE raises many kinds for unknown or garbage files
        raise JaxmatInputError(f"cannot read structures from {spec}: {type(error).__name__}: {error}") from None
    if not frames:
        raise JaxmatInputError(f"{spec} holds no structures")
    return frames


def load_structures(source: str = "embedded", path=None, limit: int | None = None, **options) -> LoadReport:
    """Load structures from a named source (see module docstring). Returns a LoadReport."""
    if source == "embedded" or source in EMBEDDED:
        pairs: list = []
        for name, (resource, reader) in EMBEDDED.items():
            if source in ("embedded", name):
                pairs += list(reader(resource_path(resource), name))
        return _pairs_to_report(pairs, limit)
    if source == "file":
        if path is None:
            raise JaxmatInputError("data.source=file needs data.path")
        path = Path(path)
        if not path.exists():
            raise JaxmatInputError(f"data.path {path} does not exist")
        if path.is_dir():
            return _pairs_to_report(read_cif_folder(path), limit)
        name = path.name.lower()
        if name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
            return _pairs_to_report(read_extxyz(path), limit)
        if name.endswith((".json", ".json.gz")):
            return _pairs_to_report(read_pymatgen_json(path), limit)
        if name.endswith(".cif"):
            from pymatgen.core import Structure

            return _pairs_to_report([(path.stem, lambda: from_pymatgen(Structure.from_file(path), path.stem, str(path)))], limit)
        raise JaxmatInputError(f"data.path {path}: unsupported file type (extxyz, xyz, json, json.gz, cif or a CIF folder)")
    if source == "lemat":
        rows = iter_lemat_rows(path, options.get("config", "compatible_pbe"))
        pairs = ((str(r.get("immutable_id", i)), (lambda r=r: lemat_row_to_record(r))) for i, r in enumerate(rows))
        return _pairs_to_report(pairs, limit)
    if source == "mp":
        docs = fetch_mp_docs(options.get("api_key"), **options.get("query", {}))
        return _pairs_to_report(mp_docs_to_factories(docs), limit)
    raise JaxmatInputError(f"unknown data source {source!r}: use embedded, embedded:mp, embedded:heo, file, lemat or mp")
