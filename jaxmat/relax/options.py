"""The settings of a relaxation, checked before any work: physics (fmax, steps), the optimizer and its options,
the cell filter, and the device loop's knobs in one frozen :class:`DeviceLoopOptions`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from jaxmat.errors import ConfigError
from jaxmat.relax.cell import CellFilter
from jaxmat.relax.lists import PLACES
from jaxmat.relax.optimizers import OPTIMIZERS

LOOPS = ("auto", "device", "host")


@dataclass(frozen=True)
class DeviceLoopOptions:
    """How the compiled device loop (:mod:`jaxmat.relax.device_loop`) runs; the results do not depend on them.

    skin: neighbour-list margin (Å); a list is rebuilt once an atom moved skin / 2.
    max_inner: most loop iterations per device call (results and progress are reported between calls).
    allocation: where lists are built when systems join or capacities grow: "host" (vesin), "device" or
    "auto" (the device on GPUs/TPUs, the host on CPU). rebuild: where a stale list is rebuilt, "device" (inside
    the compiled loop) or "host" (the loop returns and vesin rebuilds it: faster on CPU and a smaller program)
    or "auto" (as allocation's auto)."""

    skin: float = 0.3
    max_inner: int = 50
    allocation: str = "auto"
    rebuild: str = "auto"

    def __post_init__(self):
        if not (np.isfinite(self.skin) and self.skin >= 0):
            raise ConfigError(f"device loop skin must be a number of Å >= 0, not {self.skin!r}")
        if int(self.max_inner) != self.max_inner or self.max_inner < 1:
            raise ConfigError(f"device loop max_inner must be a whole number >= 1, not {self.max_inner!r}")
        for name in ("allocation", "rebuild"):  # refused here, whichever loop runs
            if getattr(self, name) not in PLACES:
                raise ConfigError(f"device loop {name} must be one of {', '.join(PLACES)}, not {getattr(self, name)!r}")


def check_settings(fmax: float, max_steps: int, max_atoms: int | None, max_systems: int | None, loop: str = "auto") -> None:
    """Refuse settings that cannot describe a relaxation (before any work)."""
    if not (np.isfinite(fmax) and fmax > 0):
        raise ConfigError(f"fmax must be a positive number of eV/Å, not {fmax!r}")
    if int(max_steps) != max_steps or max_steps < 0:
        raise ConfigError(f"max_steps must be a whole number >= 0, not {max_steps!r}")
    check_count("max_atoms", max_atoms), check_count("max_systems", max_systems)
    if loop not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")


def check_count(name: str, value) -> None:
    """A whole number >= 1 or None (max_atoms, max_systems)."""
    if value is not None and (not isinstance(value, (int, np.integer, float)) or int(value) != value or value < 1):
        raise ConfigError(f"{name} must be a whole number >= 1 (or None), not {value!r}")


def make_optimizer(optimizer, options: dict | None = None):
    """The optimizer: a name in :data:`jaxmat.relax.optimizers.OPTIMIZERS` with ``options`` (its dataclass fields,
    e.g. ``{"dt_max": 0.5}`` for FIRE), or an optimizer instance (then options must be empty)."""
    if not isinstance(optimizer, str):
        if options:
            raise ConfigError(f"optimizer_options go with an optimizer name; {type(optimizer).__name__} is already built "
                              f"(set them on the instance: dataclasses.replace(optimizer, ...))")
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}: use {', '.join(OPTIMIZERS)}")
    kind = OPTIMIZERS[optimizer]
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ConfigError(f"optimizer {optimizer!r} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(sorted(fields))}")
    return kind(**(options or {}))


def cell_options(cell_filter, relax_cell: bool) -> CellFilter | None:
    """The cell filter of a run (None: cells stay fixed); a filter without relax_cell is refused."""
    if cell_filter is None:
        return CellFilter() if relax_cell else None
    if not relax_cell:
        raise ConfigError(f"cell_filter={cell_filter!r} needs relax_cell=True")
    try:
        return CellFilter(cell_filter) if isinstance(cell_filter, str) else cell_filter
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
