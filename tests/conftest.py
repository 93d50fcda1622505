"""Shared fixtures. Tests that read ../shared/ skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAXMAT_COMPILATION_CACHE", "0")  # commands run by tests keep no XLA cache in the user's home
SHARED = Path(os.environ.get("JAXMAT_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """Path under ../shared/, or skip the test when it is not there."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/ is absent)")
    return path


@pytest.fixture(scope="module")
def x64():
    """Enable float64 in JAX for the tests of one module, and restore the previous mode after it."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def write_relax_manifest(argv, out):
    """The OUT.partial.json that ``python -m jaxmat.relax argv`` writes when it starts: tests that hand-make an
    OUT.partial (as if a run had been killed) need it, or the command refuses to resume from a stranger's file."""
    from jaxmat.data.sources import read_atoms
    from jaxmat.files import write_json
    from jaxmat.relax.__main__ import build_parser, manifest_path, run_manifest

    args = build_parser().parse_args(argv)
    write_json(manifest_path(out), run_manifest(args, read_atoms(args.input)))
