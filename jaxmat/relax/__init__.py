"""Batched geometry relaxation: many periodic systems at once with per-system FIRE, L-BFGS or ASE's
L-BFGS with line search (``"lbfgs-linesearch"``).

``relax(structures, force_field, optimizer="fire")`` runs a queue of ASE Atoms with in-flight
batching; ``python -m jaxmat.relax`` is the command line.
"""

from jaxmat.relax.optimizers import FIRE, LBFGS, OPTIMIZERS, LBFGSLineSearch
from jaxmat.relax.runner import RelaxResult, relax

__all__ = ["FIRE", "LBFGS", "LBFGSLineSearch", "OPTIMIZERS", "RelaxResult", "relax"]
