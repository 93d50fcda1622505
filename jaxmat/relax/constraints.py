"""ASE constraints as arrays, applied on the device as ASE applies them (the host loop lets ASE apply its own).

The one place that reads ``atoms.constraints``: :func:`refusal` names what jaxmat does not apply (a
structure with it is refused), :func:`arrays` turns the rest into per-atom rows:

- ``free`` (N, 3): 0 where FixAtoms / FixCartesian fix a Cartesian component, else 1;
- ``com_mass`` (N,): the mass (amu) of atoms whose centre of mass FixCom / FixSubsetCom keeps, else 0;
- FixSymmetry (ASE's, spglib's operations found when the user made it): ``sym_rotations`` (O, 3, 3), the
  operations' rotations in fractional coordinates, and ``sym_source`` (N, O), the atom each operation
  brings onto each atom (O = 0 without FixSymmetry). Forces and stress are averaged over the operations
  (ASE's symmetrize_rank1 / rank2 at the current cell), a new cell's deformation and the atoms' step too.

As ASE does it: forces are projected (fixed components zeroed, then the mass-weighted force
sum - masses @ forces / sum(masses^2) - removed), and every new geometry the optimizer sets is adjusted
against the one before (fixed components kept, then the whole system shifted so the centre of mass
stays). Fixed components are applied before the centre of mass, so a FixCom listed before a
FixAtoms / FixCartesian (which ASE would apply in the other order) is refused; FixSymmetry is applied
alone (with any other constraint the structure is refused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MASKS = ("FixAtoms", "FixCartesian")
CENTRE = ("FixCom", "FixSubsetCom")
SUPPORTED = MASKS + CENTRE + ("FixSymmetry",)


def refusal(atoms) -> str | None:
    """Why jaxmat cannot apply this structure's constraints (naming them), or None."""
    names = [type(c).__name__ for c in atoms.constraints]
    unknown = sorted({n for n in names if n not in SUPPORTED})
    if unknown:
        return (f"has ASE constraints jaxmat does not apply ({', '.join(unknown)}); jaxmat applies "
                f"{', '.join(SUPPORTED)}: remove the others or relax with ASE")
    if "FixSymmetry" in names:
        symmetry = atoms.constraints[names.index("FixSymmetry")]
        if len(names) > 1:
            return f"has FixSymmetry with other constraints ({', '.join(names)}): jaxmat applies FixSymmetry alone"
        if not (symmetry.do_adjust_positions and symmetry.do_adjust_cell):
            return "has FixSymmetry(adjust_positions=False or adjust_cell=False): jaxmat applies the defaults only"
    centre = [k for k, n in enumerate(names) if n in CENTRE]
    if centre and any(n in MASKS for n in names[centre[0]:]):
        return f"lists a centre-of-mass constraint before {'/'.join(MASKS)} ({', '.join(names)}): list the fixed atoms first"
    return None


def arrays(atoms) -> dict:
    """The structure's constraints as rows: free (N, 3) 0/1, com_mass (N,) amu (0: not in a FixCom), sym_source (N, O),
    sym_rotations (O, 3, 3)."""
    n = len(atoms)
    free, com_mass = np.ones((n, 3)), np.zeros(n)
    source, rotations = np.zeros((n, 0), np.int32), np.zeros((0, 3, 3))
    for c in atoms.constraints:
        name = type(c).__name__
        if name == "FixSymmetry":
            maps = np.asarray(c.symm_map, int)  # (O, N): operation o brings atom i onto atom maps[o, i]
            source = np.zeros((n, len(maps)), np.int32)
            for o, image in enumerate(maps):
                source[image, o] = np.arange(n)
            rotations = np.asarray(c.rotations, float)
        elif name == "FixAtoms":
            free[c.index] = 0.0
        elif name == "FixCartesian":
            free[c.index] *= ~np.asarray(c.mask, bool)
        elif name in CENTRE:
            index = np.arange(n)[getattr(c, "index", slice(None))]
            com_mass[index] = atoms.get_masses()[index]
    return {"free": free, "com_mass": com_mass, "sym_source": source, "sym_rotations": rotations}


def is_constrained(rows: dict) -> bool:
    return bool(np.any(rows["free"] == 0.0) or np.any(rows["com_mass"] > 0.0) or len(rows["sym_rotations"]))


def adjust_forces(forces, free, com_mass, system_index, n_systems):
    """Forces (A, 3) eV/Å as ASE's adjust_forces leaves them."""
    forces = forces * free
    weight_sum = jax.ops.segment_sum(com_mass**2, system_index, n_systems)
    lmd = jax.ops.segment_sum(com_mass[:, None] * forces, system_index, n_systems)
    lmd = lmd / jnp.where(weight_sum > 0, weight_sum, 1.0)[:, None]
    return forces - com_mass[:, None] * lmd[system_index]


def adjust_positions(new, old, free, com_mass, system_index, n_systems):
    """New positions (A, 3) Å as ASE's adjust_positions leaves them, given the positions before (A, 3) Å."""
    new = jnp.where(free > 0, new, old)
    mass = jax.ops.segment_sum(com_mass, system_index, n_systems)
    centre = lambda r: jax.ops.segment_sum(com_mass[:, None] * r, system_index, n_systems) / jnp.where(mass > 0, mass, 1.0)[:, None]
    shift = jnp.where((mass > 0)[:, None], centre(old) - centre(new), 0.0)
    return new + shift[system_index]


def symmetrize_vectors(vectors, cells, source, rotations, weights, system_index):
    """ASE's symmetrize_rank1 per system: vectors (A, 3) (forces eV/Å, steps Å) averaged over the symmetry
    operations at these cells (S, 3, 3) Å; source (A, W) global rows, rotations (S, W, 3, 3), weights (S, W) 1/0."""
    scaled = jnp.einsum("nb,nba->na", vectors, jnp.linalg.inv(cells)[system_index])  # v @ L^-1
    weighted = (rotations * weights[..., None, None])[system_index]
    rotated = jnp.einsum("nwab,nwb->na", weighted, scaled[source])
    count = jnp.sum(weights, 1)[system_index][:, None]
    return jnp.einsum("na,nab->nb", rotated / jnp.where(count > 0, count, 1.0), cells[system_index])  # @ L


def symmetrize_tensors(tensors, cells, rotations, weights):
    """ASE's symmetrize_rank2 per system: tensors (S, 3, 3) (stress, a deformation) averaged over the rotations."""
    scaled = jnp.einsum("sab,sbc,sdc->sad", cells, tensors, cells)  # L t L^T
    total = jnp.einsum("sw,swba,sbc,swcd->sad", weights, rotations, scaled, rotations)  # sum of R^T x R
    count = jnp.sum(weights, 1)[:, None, None]
    inverse = jnp.linalg.inv(cells)
    return jnp.einsum("sab,sbc,sdc->sad", inverse, total / jnp.where(count > 0, count, 1.0), inverse)
