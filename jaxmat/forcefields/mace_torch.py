"""MACE bridge: any mace-torch model file evaluated on a whole batch of systems in one call.

It builds MACE's own graphs (``mace.data.AtomicData``, matscipy neighbour lists, periodic images)
for every system, collates them into one batch and runs the model once, returning energies,
forces and stress in eV, eV/Å and eV/Å^3 (float64 by default), the same numbers as
``mace.calculators.MACECalculator`` per structure.
"""

from __future__ import annotations

from pathlib import Path

import mace  # noqa: F401  -- must come before anything that imports e3nn (torch weights-only unpickling)
import numpy as np

from jaxmat.forcefields.base import ForceFieldOutput, SystemBatch
from jaxmat.forcefields.mace_models import choose_head


class MACETorch:
    """Force field from a mace-torch ``.model`` file (or an in-memory module)."""

    def __init__(self, model, device: str = "cpu", dtype: str = "float64", head: str | None = None):
        import torch
        from mace import tools

        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.exists():
                raise FileNotFoundError(f"MACE model file {path} not found")
            model = torch.load(path, map_location=device, weights_only=False)
        self.torch_dtype = torch.float64 if dtype == "float64" else torch.float32
        self.model = model.to(device=device, dtype=self.torch_dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.device = device
        self.r_max = float(self.model.r_max)
        self.z_table = tools.AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        self.supported_numbers = frozenset(self.z_table.zs)
        heads = getattr(self.model, "heads", None) or ["Default"]
        self.heads = list(heads)
        self.head = choose_head(self.heads, head)  # MACECalculator's rule, but an unknown head is an error

    def _graphs(self, batch: SystemBatch):
        from ase import Atoms
        from mace import data as mace_data
        from mace.tools import torch_tools

        graphs = []
        charge, spin = batch.charges_and_spins()
        keys = mace_data.KeySpecification(info_keys={"total_charge": "charge", "total_spin": "spin"})  # the calculator's keys
        with torch_tools.default_dtype(self.torch_dtype):
            for s in range(batch.n_systems):
                atoms_mask = batch.system_index == s
                atoms = Atoms(numbers=batch.numbers[atoms_mask], positions=batch.positions[atoms_mask], cell=batch.cells[s], pbc=batch.pbc[s],
                              info={"charge": charge[s], "spin": spin[s]})
                config = mace_data.config_from_atoms(atoms, key_specification=keys, head_name=self.head)
                graphs.append(mace_data.AtomicData.from_config(config, z_table=self.z_table, cutoff=self.r_max, heads=self.heads))
        return graphs

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput:
        from mace.tools import torch_geometric

        order = np.argsort(batch.system_index, kind="stable")
        if not np.all(order == np.arange(len(order))):
            raise ValueError("SystemBatch atoms must be grouped by system (system_index non-decreasing)")
        collated = torch_geometric.Batch.from_data_list(self._graphs(batch)).to(self.device)
        out = self.model(collated.to_dict(), compute_stress=compute_stress, training=False)
        stress = out.get("stress") if compute_stress else None
        return ForceFieldOutput(
            out["energy"].detach().cpu().numpy().astype(np.float64),
            out["forces"].detach().cpu().numpy().astype(np.float64),
            None if stress is None else stress.detach().cpu().numpy().astype(np.float64),
        )
