"""jaxmat: JAX/Flax toolkit for materials machine learning.

Three applications over a shared base (docs/architecture.md):
  polysrl     probabilistic stoichiometry representation learning (graphs, encoders, loss, training,
              checkpoints, embedding, evaluation); commands jaxmat.train / embed / evaluate / analyze_uncertainty
  relax       many periodic structures relaxed at once (ASE-faithful FIRE / L-BFGS, cell filter, a compiled
              device loop); command jaxmat.relax
  heo         high-entropy-oxide curation, MACE finetuning, supercells, evaluation and report
over
  data        formulas, element tables, structure records and dataset sources
  forcefields the ForceField interface, a registry, neighbour lists, JAX MACE, the mace-torch bridge,
              CHGNet, jax-md pair potentials
"""

__version__ = "0.1.0"
