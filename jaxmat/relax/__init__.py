"""Batched geometry relaxation: many periodic systems at once with per-system FIRE or L-BFGS.

``relax(structures, force_field, optimizer="fire")`` runs a queue of ASE Atoms with in-flight
batching; ``python -m jaxmat.relax`` is the command line.
"""

from jaxmat.relax.optimizers import FIRE, LBFGS
from jaxmat.relax.runner import RelaxResult, relax

__all__ = ["FIRE", "LBFGS", "RelaxResult", "relax"]
