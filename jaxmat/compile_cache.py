"""The persistent XLA compilation cache of jaxmat's commands: compiled programs are kept on disk, so a
second run with the same shapes (the device relaxation loop, the JAX MACE) compiles nothing.

Called by entry points (``python -m jaxmat.relax``, ``jaxmat.heo.evaluate``), never on import. The folder
is ``$JAXMAT_COMPILATION_CACHE`` if set (``0``, ``off`` or an empty value disable the cache), else
``$XDG_CACHE_HOME/jaxmat/xla`` (``~/.cache/jaxmat/xla``). Python users call :func:`enable` themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT = "JAXMAT_COMPILATION_CACHE"


def cache_folder() -> Path | None:
    """Where compiled programs are kept, or None when the environment turns the cache off."""
    value = os.environ.get(ENVIRONMENT)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "false", "no") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxmat" / "xla"


def enable(folder: str | Path | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on in ``folder`` (default :func:`cache_folder`); the folder used."""
    import jax

    folder = Path(folder) if folder is not None else cache_folder()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # jaxmat compiles few, large programs
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
