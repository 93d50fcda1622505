"""Force-field calls on many structures at once, with the one failure rule of the host-driven loops.

A call that raises is classified (:func:`failure_kind`):

- out of memory (``MemoryError``, torch's ``OutOfMemoryError``, XLA's ``RESOURCE_EXHAUSTED``): the batch is
  halved and retried, and later calls use the smaller batch; a structure that does not fit alone is failed;
- numerical (``ArithmeticError``, ``numpy.linalg.LinAlgError``, ASE's ``CalculationFailed``): the structures are
  evaluated one by one, and those that raise are failed with the message;
- anything else (a bug, a wrong input the force field did not expect): :class:`jaxmat.errors.ForceFieldError`
  naming the structures of the call, chained to the original exception.

Non-finite results are not exceptions: the loops fail those structures themselves.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy as np

from jaxmat.errors import ForceFieldError
from jaxmat.forcefields.base import batch_from_atoms

log = logging.getLogger(__name__)

MEMORY_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemory")


def failure_kind(error: BaseException) -> str:
    """"memory", "numerical" or "other" for an exception a force field raised."""
    if isinstance(error, MemoryError) or any(m in f"{type(error).__name__}: {error}" for m in MEMORY_MARKERS):
        return "memory"
    from ase.calculators.calculator import CalculationFailed

    if isinstance(error, (ArithmeticError, np.linalg.LinAlgError, CalculationFailed)):
        return "numerical"
    return "other"


class BatchEvaluation:
    """Evaluates a force field on lists of Atoms, ``batch_systems`` structures per call at most (None: all;
    halved on out-of-memory for the rest of the run). ``describe(positions)`` names structures in errors
    (positions index the list passed to the call). Counts calls, structures and halvings in ``counters``."""

    def __init__(self, force_field, describe: Callable[[Sequence[int]], str], counters: dict | None = None):
        self.force_field, self.describe = force_field, describe
        self.batch_systems: int | None = None
        self.counters = counters if counters is not None else {}
        for key in ("force_calls", "structure_evaluations", "memory_halvings", "force_seconds"):
            self.counters.setdefault(key, 0)

    def __call__(self, structures: Sequence, compute_stress: bool = False):
        """(energies (S,) eV, forces (N, 3) eV/Å, stresses (S, 3, 3) eV/Å^3 or None, messages: per structure None or
        why it failed). A failed structure has NaN values."""
        n = len(structures)
        energies, stresses = np.full(n, np.nan), np.full((n, 3, 3), np.nan) if compute_stress else None
        starts = np.concatenate([[0], np.cumsum([len(a) for a in structures])]).astype(int)
        forces, messages = np.full((starts[-1], 3), np.nan), [None] * n
        arrays = (energies, forces, stresses, starts)
        pending, alone = list(range(n)), set()  # alone: structures of a call that failed numerically, retried singly
        while pending:
            size = 1 if pending[0] in alone else (self.batch_systems or len(pending))
            chunk, pending = pending[:size], pending[size:]
            try:
                self.store(chunk, self.call(structures, chunk, compute_stress), arrays)
            except ForceFieldError:
                raise
            except Exception as error:  # noqa: BLE001 - classified: memory, numerical or re-raised naming the structures
                kind = failure_kind(error)
                if kind == "memory" and len(chunk) > 1:
                    self.batch_systems = max(1, len(chunk) // 2)
                    self.counters["memory_halvings"] += 1
                    log.warning("out of memory evaluating %d structures (%s); continuing with %d at a time",
                                len(chunk), error, self.batch_systems)
                    pending = chunk + pending
                elif kind == "other":
                    raise ForceFieldError(f"the force field raised {type(error).__name__} on {self.describe(chunk)}: {error}") from error
                elif len(chunk) > 1:  # numerical: which structures fail, one by one
                    log.warning("force evaluation of %d structures failed (%s); evaluating them one by one", len(chunk), error)
                    alone.update(chunk)
                    pending = chunk + pending
                else:
                    messages[chunk[0]] = ("out of memory even alone: " if kind == "memory" else "force field failed: ") + \
                        f"{type(error).__name__}: {error}"
                    log.warning("%s: %s", self.describe(chunk), messages[chunk[0]])
        return energies, forces, stresses, messages

    def call(self, structures, chunk, compute_stress):
        """The force field on these structures: (energy (S,), forces (N, 3), stress (S, 3, 3) or None) as float64
        numpy arrays, waited for (so asynchronous failures surface here), shapes checked."""
        self.counters["force_calls"] += 1
        self.counters["structure_evaluations"] += len(chunk)
        started = time.perf_counter()
        try:
            out = self.force_field(batch_from_atoms([structures[k] for k in chunk]), compute_stress=compute_stress)
            energy, forces = np.asarray(out.energy, np.float64), np.asarray(out.forces, np.float64)
            stress = None if out.stress is None else np.asarray(out.stress, np.float64)
        finally:
            self.counters["force_seconds"] += time.perf_counter() - started
        n_atoms = sum(len(structures[k]) for k in chunk)
        expected = {"energy": (energy, (len(chunk),)), "forces": (forces, (n_atoms, 3))}
        if compute_stress:
            expected["stress"] = (stress, (len(chunk), 3, 3))
        for name, (array, shape) in expected.items():
            if array is None or array.shape != shape:
                raise ForceFieldError(f"the force field returned {name} of shape {None if array is None else array.shape}, "
                                      f"not {shape} (eV, eV/Å, eV/Å^3 per system / atom), for {self.describe(chunk)}")
        return energy, forces, stress

    @staticmethod
    def store(chunk, out, arrays):
        energy, force, stress = out
        energies, forces, stresses, starts = arrays
        offset = 0
        for j, k in enumerate(chunk):
            n = starts[k + 1] - starts[k]
            energies[k], forces[starts[k] : starts[k + 1]] = energy[j], force[offset : offset + n]
            offset += n
            if stresses is not None:
                stresses[k] = stress[j]


def finite(energy, forces, stress=None) -> bool:
    """Whether a structure's energy, forces (and stress, if any) are all finite: the one test both loops and
    single points apply."""
    return bool(np.isfinite(energy) and np.all(np.isfinite(forces)) and (stress is None or np.all(np.isfinite(stress))))
