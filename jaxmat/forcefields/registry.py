"""A force field from a name or a path: the one table of force-field kinds.

    lj[:sigma,epsilon,cutoff]          Lennard-Jones pair potential (Å, eV), JAX
    morse[:sigma,epsilon,alpha,cutoff] Morse pair potential (Å, eV), JAX
    chgnet                             CHGNet through matgl (labels and reference energies)
    PATH.model                         a mace-torch model: run by mace-torch (backend "torch") or
                                       converted to jaxmat's JAX MACE (backend "jax"; the conversion is
                                       kept on disk: :mod:`jaxmat.forcefields.mace.cache`)
    DIR                                a JAX MACE written by scripts/convert_mace.py (backend "jax")
    small, medium-mpa-0, mh-1, ...     mace-torch's foundation keys, fetched by mace-torch's loader
                                       (:mod:`jaxmat.forcefields.mace_models`), then as PATH.model

To add a kind: write a class with the :class:`jaxmat.forcefields.base.ForceField` interface and one
entry in :data:`NAMED` (built from a name and ``:``-separated numbers) or a branch in
:func:`load_force_field` for files.
"""

from __future__ import annotations

from pathlib import Path

from jaxmat.errors import JaxmatInputError

BACKENDS = ("torch", "jax")  # MACE implementations: mace-torch, or jaxmat's JAX MACE


def _lennard_jones(*values):
    from jaxmat.forcefields import classical

    return classical.lennard_jones(*values)


def _morse(*values):
    from jaxmat.forcefields import classical

    return classical.morse(*values)


def _chgnet():
    from jaxmat.forcefields.chgnet import CHGNetForceField

    return CHGNetForceField()


NAMED = {  # name -> (builder taking the numbers after ':', most numbers)
    "lj": (_lennard_jones, 3),
    "morse": (_morse, 4),
    "chgnet": (_chgnet, 0),
}


def load_force_field(spec: str, backend: str = "torch", dtype: str = "float64", head: str | None = None):
    """A force field from a name in :data:`NAMED` (``lj:3.4,0.01,8``), a MACE model path or a foundation key.

    backend: "torch" (mace-torch) or "jax" (jaxmat's JAX MACE) for MACE models; dtype: "float64" or
    "float32" for MACE models, or for the JAX MACE "mixed" (float32 model, float64 geometry and sums:
    :mod:`jaxmat.forcefields.mace.forcefield`); pair potentials compute in the precision the caller runs JAX in.
    head: the head of a multi-head MACE model (default: mace-torch's calculator rule,
    :func:`jaxmat.forcefields.mace_models.choose_head`).
    """
    if backend not in BACKENDS:
        raise JaxmatInputError(f"backend must be one of {BACKENDS}, not {backend!r}")
    name, _, args = str(spec).partition(":")
    if name in NAMED:
        if head is not None:
            raise JaxmatInputError(f"force field {spec!r} has no heads (a head is chosen for MACE models only)")
        build, most = NAMED[name]
        try:
            values = [float(v) for v in args.split(",")] if args else []
        except ValueError:
            raise JaxmatInputError(f"force field {spec!r}: the parameters after ':' must be numbers") from None
        if len(values) > most:
            raise JaxmatInputError(f"force field {spec!r}: {name} takes at most {most} parameters")
        return build(*values)
    from jaxmat.forcefields import mace_models

    path = Path(spec)
    if not path.exists():
        path = mace_models.model_file(str(spec), torch_free=backend == "jax")
    if path is None:
        raise JaxmatInputError(f"model {spec} not found (a mace-torch .model file, a converted JAX MACE directory, "
                               f"one of {', '.join(NAMED)}, or a mace-torch foundation key: "
                               f"{', '.join(mace_models.foundation_keys())})")
    if backend == "jax":
        from jaxmat.forcefields.mace import UnsupportedMACEError, cache
        from jaxmat.forcefields.mace.convert import from_torch
        from jaxmat.forcefields.mace.forcefield import MACEJax

        try:
            if path.is_dir():
                config, params = _read_converted(path)
            else:
                config, params = cache.converted(path, lambda: from_torch(read_mace_file(path)))
        except UnsupportedMACEError as error:
            raise JaxmatInputError(str(error)) from error
        return _with_model_name(spec, lambda: MACEJax(config, params, dtype=dtype, head=head))
    if path.is_dir():
        raise JaxmatInputError(f"{spec} is a converted JAX MACE directory: use backend jax (--backend jax)")
    if dtype not in ("float64", "float32"):
        raise JaxmatInputError(f"dtype {dtype!r} is not available with mace-torch (float64 or float32); "
                               f"'mixed' is a JAX MACE mode: use backend jax (--backend jax)")
    from jaxmat.forcefields.mace_torch import MACETorch

    module = read_mace_file(path)
    return _with_model_name(spec, lambda: MACETorch(module, dtype=dtype, head=head))


def _with_model_name(spec, build):
    """build(), its input errors (an unknown head) prefixed with the model's name."""
    try:
        return build()
    except JaxmatInputError as error:
        raise JaxmatInputError(f"model {spec}: {error}") from None


def read_mace_file(path):
    """The mace-torch module of a .model file; an input error naming the file when it is truncated,
    corrupted or holds something else."""
    import mace  # noqa: F401  -- before e3nn, and the classes the file refers to
    import torch

    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # zip / pickle / EOF errors of a truncated or foreign file
        message = str(error).splitlines()[0] if str(error) else ""
        raise JaxmatInputError(f"cannot read MACE model {path}: {type(error).__name__}: {message[:200]} (a truncated or "
                               f"corrupted file? copy or download it again)") from None
    if not isinstance(module, torch.nn.Module) or not hasattr(module, "atomic_numbers") or not hasattr(module, "r_max"):
        raise JaxmatInputError(f"{path} is not a mace-torch model file: it holds a {type(module).__name__}")
    return module


def _read_converted(path: Path):
    """(config, params) of a directory written by scripts/convert_mace.py; an input error naming it when damaged."""
    from jaxmat.forcefields.mace.io import load

    try:
        return load(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # json / orbax errors of a damaged directory
        message = str(error).splitlines()[0] if str(error) else ""
        raise JaxmatInputError(f"cannot read the converted JAX MACE {path}: {type(error).__name__}: {message[:200]} "
                               f"(convert it again with scripts/convert_mace.py)") from None
