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


def append_frame(path, atoms) -> None:
    """Append one extxyz frame to an append log in a single write, flushed to disk before returning."""
    import io
    import os

    import ase.io

    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    with open(path, "a") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def read_frame_log(path) -> tuple[list, int]:
    """The complete extxyz frames of an append log, and how many bytes of a truncated last frame (an append
    cut short by a kill) were dropped; the file is then rewritten without them, so appends go on cleanly."""
    import io

    import ase.io

    path = Path(path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    end, line = 0, 0  # end: characters of complete frames
    while line < len(lines):
        try:
            n_atoms = int(lines[line].strip())
        except ValueError:
            break
        last = line + n_atoms + 1  # the frame's last line
        if last >= len(lines) or not lines[last].endswith("\n"):
            break
        end += sum(len(x) for x in lines[line:last + 1])
        line = last + 1
    complete = text[:end]
    frames = ase.io.read(io.StringIO(complete), index=":", format="extxyz") if complete else []
    dropped = len(text) - end
    if dropped:
        write_atomically(path, lambda tmp: tmp.write_text(complete))
    return frames, dropped
