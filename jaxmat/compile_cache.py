"""jaxmat's caches on disk: the persistent XLA compilation cache of its commands (compiled programs, so a
second run with the same shapes - the device relaxation loop, the JAX MACE - compiles nothing) and, next to
it, the JAX parameters of converted mace-torch models (:mod:`jaxmat.forcefields.mace.cache`).

:func:`enable` is called by entry points (``python -m jaxmat.relax``, ``jaxmat.heo.evaluate``), never on
import; Python users call it themselves. The folders are ``$XDG_CACHE_HOME/jaxmat/xla`` and ``.../jaxmat/mace``
(``~/.cache/jaxmat/...``); ``$JAXMAT_COMPILATION_CACHE=DIR`` moves them to ``DIR`` and ``DIR/mace``, and ``0``,
``off`` or an empty value turn both off.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT = "JAXMAT_COMPILATION_CACHE"


def cache_folder(kind: str = "xla") -> Path | None:
    """Where compiled programs ("xla") or converted MACE parameters ("mace") are kept, or None when the
    environment turns the caches off."""
    value = os.environ.get(ENVIRONMENT)
    if value is not None:
        if value.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        folder = Path(value).expanduser()
        return folder if kind == "xla" else folder / kind
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxmat" / kind


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
