"""Batched geometry relaxation: many periodic systems at once with per-system FIRE, L-BFGS or ASE's
L-BFGS with line search (``"lbfgs-linesearch"``), and single-point evaluation.

``relax(structures, force_field, optimizer="fire")`` runs a queue of ASE Atoms with in-flight batching and
returns :class:`RelaxResults` (with ``.stats``); ``evaluate(structures, force_field)`` gives energies, forces and
stresses; ``python -m jaxmat.relax`` is the command line.
"""

from jaxmat.relax.cell import CellFilter
from jaxmat.relax.optimizers import FIRE, LBFGS, OPTIMIZERS, LBFGSLineSearch
from jaxmat.relax.options import DeviceLoopOptions
from jaxmat.relax.results import RelaxResult, RelaxResults
from jaxmat.relax.runner import relax
from jaxmat.relax.single_point import SinglePoint, evaluate

__all__ = ["CellFilter", "DeviceLoopOptions", "FIRE", "LBFGS", "LBFGSLineSearch", "OPTIMIZERS", "RelaxResult", "RelaxResults",
           "SinglePoint", "evaluate", "relax"]
