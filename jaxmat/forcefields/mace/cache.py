"""Converted mace-torch models kept on disk, so a second run with the same .model file neither imports torch
nor converts again.

An entry is named by the sha256 of the file's bytes, the converter's version and the on-disk format
(:data:`jaxmat.forcefields.mace.io.FORMAT`): a changed file or converter never meets an old entry. It is an
:mod:`~jaxmat.forcefields.mace.io` directory plus the sha256 of its parameters, checked on every load: an entry
that does not load or whose parameters differ is ignored and written again. Entries are written under a
temporary name and renamed whole, so concurrent processes and kills leave complete entries or none.
The folder is :func:`jaxmat.compile_cache.cache_folder` ("mace"): ``~/.cache/jaxmat/mace``, moved or turned
off (``0``) with ``$JAXMAT_COMPILATION_CACHE`` like the compilation cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
DIGEST = "params.sha256"


def cache_folder() -> Path | None:
    """Where converted models are kept (None: the cache is off)."""
    from jaxmat.compile_cache import cache_folder as folder

    return folder("mace")


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_name(path) -> str:
    """The entry of a .model file: its bytes' sha256, the converter version and the io format."""
    from jaxmat.forcefields.mace import convert, io

    return f"{file_digest(path)}-v{getattr(convert, 'CONVERTER_VERSION', 1)}-{io.FORMAT}"


def params_digest(params) -> str:
    """sha256 of a params tree (nested dicts and lists of arrays): structure, dtypes, shapes and values."""
    digest = hashlib.sha256()

    def visit(node, where):
        if isinstance(node, dict):
            for key in sorted(node):
                visit(node[key], f"{where}/{key}")
        elif isinstance(node, (list, tuple)):
            for i, child in enumerate(node):
                visit(child, f"{where}/{i}")
        else:
            array = np.ascontiguousarray(node)
            digest.update(f"{where}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())

    visit(params, "")
    return digest.hexdigest()


def _read(entry: Path):
    """(config, params) of an entry, or None (with a warning) when it is damaged."""
    from jaxmat.forcefields.mace import io

    try:
        config, params = io.load(entry)
        if params_digest(params) == (entry / DIGEST).read_text().strip():
            return config, params
        problem = "its parameters differ from the ones written"
    except Exception as error:  # json / orbax / missing files of a damaged entry
        problem = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    log.warning("converted MACE cache entry %s is damaged (%s): converting again", entry, problem)
    return None


def _write(entry: Path, config: dict, params) -> None:
    """Write an entry under a temporary name and rename it into place (a concurrent writer's entry is kept)."""
    from jaxmat.forcefields.mace import io

    temporary = entry.with_name(f"{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        io.save(config, params, temporary)
        (temporary / DIGEST).write_text(params_digest(params))
        if entry.exists():  # damaged (read failed): replace it
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(temporary, entry)
    except OSError as error:  # a read-only or full disk, or another process renamed its entry first
        if not entry.exists():
            log.warning("cannot keep the converted MACE model in %s: %s", entry, error)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(temporary.with_name(temporary.name + ".partial"), ignore_errors=True)


def converted(path, convert: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
    """(config, params) of the .model file ``path``: from the cache when an intact entry exists, else
    ``convert()`` (kept in the cache for the next run)."""
    folder = cache_folder()
    if folder is None:
        return convert()
    entry = folder / entry_name(path)
    if entry.exists() and (found := _read(entry)) is not None:
        return found
    config, params = convert()
    _write(entry, config, params)
    return config, params
