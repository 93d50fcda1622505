"""The one float64 policy of jaxmat.

JAX computes in float32 unless ``jax_enable_x64`` is on, a process-wide switch. jaxmat never flips it
as a side effect of building a model or reading a property. Precision is chosen in one of two ways:

- **at an entry point**: a command (``python -m jaxmat.train``, ``jaxmat.relax`` ...) calls
  :func:`use_float64` once, from its config or flags, before any array is made;
- **by an explicit argument**: library calls that take a precision (``relax(float64=True)``,
  ``MACEJax(dtype="float64")``, a PolySRL config with ``dtype: float64``) run their JAX work inside
  :func:`float64_scope`, which turns float64 on for that block only (``jax.enable_x64``), so a
  caller's float32 program elsewhere is untouched.

Python users who want float64 everywhere call ``jaxmat.precision.use_float64()`` first, as they would
``jax.config.update("jax_enable_x64", True)``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import jax


def use_float64(enabled: bool = True) -> None:
    """Turn JAX float64 on (or off) for the whole process. For entry points only (commands, scripts)."""
    jax.config.update("jax_enable_x64", bool(enabled))


def float64_enabled() -> bool:
    """Whether JAX currently makes float64 arrays (globally or inside a :func:`float64_scope`)."""
    return bool(jax.numpy.zeros((), dtype=float).dtype == jax.numpy.float64)


def float64_scope(enabled: bool = True):
    """Context in which JAX makes and computes float64 arrays; ``enabled=False`` leaves the setting as it is."""
    return jax.enable_x64(True) if enabled else contextlib.nullcontext()


def scoped_by(argument: str):
    """Decorator: run the function inside :func:`float64_scope`, enabled by its boolean ``argument``."""

    def wrap(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def scoped(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            enabled = bound.arguments.get(argument, signature.parameters[argument].default)
            with float64_scope(bool(enabled)):
                return function(*args, **kwargs)

        return scoped

    return wrap
