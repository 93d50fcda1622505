"""Validation of a converted JAX MACE against mace-torch: small test structures, the largest
differences, and a convert-then-check of a model file (scripts/convert_mace.py)."""

from __future__ import annotations

import numpy as np

from jaxmat.forcefields.base import batch_from_atoms
from jaxmat.forcefields.mace.convert import from_torch, load_torch_model
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.forcefields.mace_torch import MACETorch


def check_structures(atomic_numbers, seed: int = 0):
    """Two small periodic test structures (rock salt, rattled, one triclinic) of the model's elements."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    numbers = sorted(int(z) for z in atomic_numbers)
    cubic = bulk("NaCl", "rocksalt", a=4.2, cubic=True)
    cubic.numbers = rng.choice(numbers, size=len(cubic))
    triclinic = bulk("Cu", "fcc", a=3.8) * (2, 1, 1)
    triclinic.numbers = rng.choice(numbers, size=len(triclinic))
    for atoms in (cubic, triclinic):
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return [cubic, triclinic]


def compare_with_torch(torch_model, jax_force_field, structures) -> dict:
    """Largest |difference| of energy per atom (eV/atom), forces (eV/Å) and stress (eV/Å^3) between the
    mace-torch model and a JAX MACE force field on the structures (the JAX force field's head on both)."""
    batch = batch_from_atoms(structures)
    reference = MACETorch(torch_model, head=jax_force_field.heads[jax_force_field.head_index])(batch, compute_stress=True)
    ours = jax_force_field(batch, compute_stress=True)
    n_atoms = np.bincount(batch.system_index)
    return {"energy_per_atom": float(np.max(np.abs(reference.energy - ours.energy) / n_atoms)),
            "forces": float(np.max(np.abs(reference.forces - ours.forces))),
            "stress": float(np.max(np.abs(reference.stress - ours.stress)))}


def convert_model_file(model_path, out_dir, check: bool = True) -> dict:
    """Convert a mace-torch model file to a torch-free directory, reload it and (check=True) compare
    the reloaded model with mace-torch on small test structures, every head of it. Returns the largest differences."""
    from jaxmat.forcefields.mace import io

    torch_model = load_torch_model(model_path)
    config, params = from_torch(torch_model)
    io.save(config, params, out_dir)
    if not check:
        return {}
    structures = check_structures(config["atomic_numbers"])
    per_head = [compare_with_torch(torch_model, MACEJax.load(out_dir, head=head), structures) for head in config["heads"]]
    return {key: max(d[key] for d in per_head) for key in per_head[0]}
