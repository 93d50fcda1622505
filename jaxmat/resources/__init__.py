"""Embedded data shipped with jaxmat (see README.md in this folder for provenance and licences)."""

from importlib import resources
from pathlib import Path


def resource_path(name: str) -> Path:
    """Path of an embedded resource file shipped inside the package."""
    path = Path(str(resources.files("jaxmat.resources").joinpath(name)))
    if not path.exists():
        raise FileNotFoundError(f"embedded resource {name!r} is missing from the jaxmat installation")
    return path
