"""CHGNet as a jaxmat force field: the independent reference model that works offline.

CHGNet (Deng et al. 2023) ships its pretrained weights inside its wheel, so ``CHGNet.load()`` needs no
network. It predicts MPtrj energies *with* the Materials Project 2020 corrections (anion and GGA+U
corrections, linear in the composition). ``corrected=False`` (the default here) subtracts those
corrections again, giving raw PBE/PBE+U energies on the scale of LeMat-Bulk ``compatible_pbe`` and of
MACE-MP-0's training data: on 60 curated LeMat-Bulk HEO test frames the raw CHGNet energies differ
from the DFT ones by -5 meV/atom on average (MAE 21 meV/atom), the corrected ones by -590 meV/atom.
Energies eV; forces eV/Å (unchanged by the corrections); stress converted from GPa to eV/Å^3 as
chgnet's own ASE calculator does.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxmat.forcefields.base import ForceFieldOutput, SystemBatch

GPA_TO_EV_PER_A3 = 1.0 / 160.21766208


class CHGNetForceField:
    """Energies, forces and stress of many systems from CHGNet, in batches of ``batch_size`` structures."""

    def __init__(self, model=None, batch_size: int = 16, device: str = "cpu", corrected: bool = False):
        from chgnet.model import CHGNet

        self.model = model if model is not None else CHGNet.load(use_device=device, verbose=False)
        self.model.eval()
        self.batch_size = batch_size
        self.corrected = corrected
        self.supported_numbers = frozenset(range(1, 95))  # CHGNet's composition model covers H..Pu

    def structures(self, batch: SystemBatch):
        from pymatgen.core import Lattice, Structure

        return [Structure(Lattice(batch.cells[s]), batch.numbers[batch.system_index == s],
                          batch.positions[batch.system_index == s], coords_are_cartesian=True)
                for s in range(batch.n_systems)]

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput:
        structures = self.structures(batch)
        predictions = self.model.predict_structure(structures, task="efs" if compute_stress else "ef",
                                                   batch_size=self.batch_size)
        if isinstance(predictions, dict):
            predictions = [predictions]
        energy = np.array([float(p["e"]) * len(s) for p, s in zip(predictions, structures)])  # eV/atom -> eV
        if not self.corrected:
            energy = energy - np.array([mp2020_correction(s, e) for s, e in zip(structures, energy)])
        forces = np.concatenate([np.asarray(p["f"], float) for p in predictions])
        stress = np.stack([np.asarray(p["s"], float) * GPA_TO_EV_PER_A3 for p in predictions]) if compute_stress else None
        return ForceFieldOutput(energy, forces, stress)


def mp2020_correction(structure, energy: float) -> float:
    """Total Materials Project 2020 correction (eV) of a structure computed as MP does (GGA+U with MP's U
    values on oxides/fluorides of Co Cr Fe Mn Mo Ni V W, GGA otherwise)."""
    import warnings

    from pymatgen.entries.computed_entries import ComputedStructureEntry

    compatibility = _compatibility()
    elements = [str(e) for e in structure.composition.elements]
    u_values = {}
    for anion in ("O", "F"):
        if anion in elements:
            u_values = {e: compatibility.u_settings[anion].get(e, 0.0) for e in elements}
            break
    gga_u = any(u_values.values())
    entry = ComputedStructureEntry(structure, energy, parameters={"run_type": "GGA+U" if gga_u else "GGA",
                                                                  "hubbards": u_values if gga_u else {}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sum(adjustment.value for adjustment in compatibility.get_adjustments(entry)))


@functools.cache
def _compatibility():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


def label(frames, force_field=None, energy_key: str = "REF_energy", forces_key: str = "REF_forces", batch_size: int = 64,
          progress: bool = True):
    """Copies of ase.Atoms ``frames`` with CHGNet energy (eV) in info[energy_key] and forces (eV/Å) in arrays[forces_key]."""
    import sys

    from tqdm import tqdm

    from jaxmat.forcefields.base import evaluate_frames

    force_field = force_field or CHGNetForceField()
    labelled = []
    with tqdm(total=len(frames), desc="CHGNet labels", unit="frame", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(frames), batch_size):
            chunk = [a.copy() for a in frames[start:start + batch_size]]
            energies, forces = evaluate_frames(force_field, chunk, batch_atoms=sum(len(a) for a in chunk))
            for atoms, energy, force in zip(chunk, energies, forces):
                atoms.calc = None
                atoms.info[energy_key] = float(energy)
                atoms.arrays[forces_key] = force.copy()
                labelled.append(atoms)
            bar.update(len(chunk))
    return labelled
