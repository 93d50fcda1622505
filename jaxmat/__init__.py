"""jaxmat: JAX/Flax toolkit for materials machine learning.

Subpackages:
  data      formulas, element tables, structure records and dataset sources
  graphs    stoichiometry and crystal graphs as jraph.GraphsTuple, padded batching
  polysrl   probabilistic stoichiometry representation learning (encoders, loss, checkpoints)
"""

__version__ = "0.1.0"
