"""Which MACE model file and which head: mace-torch's foundation keys and its calculator's head rule.

A foundation key (``small``, ``medium``, ``medium-mpa-0``, ``small-omat-0``, ``mh-1``, ... - the keys of
``mace.calculators.foundations_models.mace_mp_urls``) is resolved by mace-torch's own loader
(``download_mace_mp_checkpoint``): it downloads the file where a network allows and otherwise uses its cache
(``$XDG_CACHE_HOME/mace``, ``~/.cache/mace``). The file a key resolved to is recorded next to the converted
MACE parameters (:mod:`jaxmat.forcefields.mace.cache`), so a JAX run of a key seen before needs no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from jaxmat.errors import JaxmatInputError


def choose_head(heads, head: str | None = None) -> str:
    """The head to evaluate, by mace-torch's ``MACECalculator`` rule: ``head`` if given, else the only head, else
    the one named "default" (any case); an unknown head, or several heads and none "default", is an input error
    listing the model's heads (mace-torch's calculator would quietly take the last head for an unknown one)."""
    heads = list(heads)
    if head is not None:
        if head not in heads:
            raise JaxmatInputError(f"head {head!r} is not one of the model's heads: {', '.join(heads)}")
        return head
    if len(heads) == 1:
        return heads[0]
    defaults = [name for name in heads if name.lower() == "default"]
    if not defaults:
        raise JaxmatInputError(f"the model has several heads and none named 'default': choose one of "
                               f"{', '.join(heads)} (--head NAME)")
    return defaults[0]


def foundation_keys() -> list[str]:
    """mace-torch's foundation model keys (imports mace-torch, hence torch)."""
    from mace.calculators import foundations_models

    return list(foundations_models.mace_mp_urls)


def cached_file(key: str) -> Path:
    """Where mace-torch's loader keeps the file of ``key`` (its own naming: the URL's file name, letters, digits and
    '_' only, in ``mace.tools.utils.get_cache_dir()``)."""
    from mace.calculators import foundations_models
    from mace.tools.utils import get_cache_dir

    name = os.path.basename(foundations_models.mace_mp_urls[key])
    return Path(get_cache_dir()) / "".join(c for c in name if c.isalnum() or c in "_")


def _record(key: str) -> Path | None:
    from jaxmat.forcefields.mace.cache import cache_folder

    folder = cache_folder()
    return None if folder is None else folder / f"foundation-{key}.json"


def _mace_version() -> str:
    import mace  # its __init__ imports no torch

    return mace.__version__


def recorded_file(key: str) -> Path | None:
    """The file ``key`` resolved to last time with this mace-torch version, if recorded and still there (no torch)."""
    record = _record(key)
    try:
        stored = json.loads(record.read_text())
        path = Path(stored["path"])
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return None
    return path if stored.get("mace") == _mace_version() and path.is_file() else None


def foundation_file(key: str) -> Path:
    """The .model file of a foundation key through mace-torch's loader (download, or its cache when offline);
    an input error naming the key, the cache path and the alternative when neither works."""
    from mace.calculators import foundations_models

    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress and licence notes are not the command's output
            path = Path(foundations_models.download_mace_mp_checkpoint(key))
    except (OSError, RuntimeError) as error:  # urllib's URLError, timeouts, an HTML page instead of a model
        reason = str(getattr(error, "reason", "") or error).splitlines()[0][:200] if str(error) else ""
        raise JaxmatInputError(f"cannot download the MACE foundation model {key!r} ({type(error).__name__}: {reason}) "
                               f"and it is not in mace-torch's cache {cached_file(key)}: connect to the network once, "
                               f"copy the file there, or pass a .model file with --model PATH") from None
    record = _record(key)
    if record is not None:
        from jaxmat.files import write_json

        with contextlib.suppress(OSError):  # a read-only cache only costs the next run a torch import
            record.parent.mkdir(parents=True, exist_ok=True)
            write_json(record, {"key": key, "mace": _mace_version(), "path": str(path.absolute())})
    return path


def model_file(spec: str, torch_free: bool = False) -> Path | None:
    """The .model file of ``spec`` when it is a foundation key (and not an existing path), else None.
    torch_free: take the file recorded for the key when there is one (the JAX backend needs no torch then)."""
    if Path(spec).exists():
        return None
    if torch_free and (path := recorded_file(spec)) is not None:
        return path
    return foundation_file(spec) if spec in foundation_keys() else None
