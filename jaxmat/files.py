"""Files written whole or not at all: each is written under NAME.partial and renamed when complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable


def write_atomically(path, write: Callable[[Path], None]) -> Path:
    """Call write(temporary_path), then rename it to path (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)
    return path


def write_frames(path, frames) -> Path:
    """ase.Atoms frames as extxyz."""
    import ase.io

    return write_atomically(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))


def write_json(path, data, indent: int = 1) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent, default=str)))


def copy_file(source, target) -> Path:
    return write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))
