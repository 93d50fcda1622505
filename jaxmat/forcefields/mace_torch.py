"""MACE bridge: any mace-torch model file evaluated on a whole batch of systems in one call.

It builds MACE's own graphs (``mace.data.AtomicData``, matscipy neighbour lists, periodic images)
for every system, collates them into one batch and runs the model once, returning energies,
forces and stress in eV, eV/Å and eV/Å^3 (float64 by default), the same numbers as
``mace.calculators.MACECalculator`` per structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import mace  # noqa: F401  -- must come before anything that imports e3nn (torch weights-only unpickling)

from jaxmat.forcefields.base import ForceFieldOutput, SystemBatch


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
        self.head = head or self.heads[-1]

    def _graphs(self, batch: SystemBatch):
        from ase import Atoms
        from mace import data as mace_data
        from mace.tools import torch_tools

        graphs = []
        with torch_tools.default_dtype(self.torch_dtype):
            for s in range(batch.n_systems):
                atoms_mask = batch.system_index == s
                atoms = Atoms(numbers=batch.numbers[atoms_mask], positions=batch.positions[atoms_mask], cell=batch.cells[s], pbc=batch.pbc[s])
                config = mace_data.config_from_atoms(atoms, head_name=self.head)
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


def build_small_mace(atomic_numbers, seed: int = 0, r_max: float = 4.0, hidden_irreps: str = "16x0e", max_ell: int = 2,
                     correlation: int = 3, num_interactions: int = 2, first_block: str = "RealAgnosticResidualInteractionBlock",
                     num_bessel: int = 8, radial_mlp=(64, 64, 64), avg_num_neighbors: float = 8.0, scale_shift=(0.1, 0.0),
                     **extra):
    """A float64 ScaleShiftMACE with random weights for these atomic numbers (any mace-torch option via extra)."""
    import torch
    from e3nn import o3
    from mace import modules

    atomic_numbers = sorted(int(z) for z in set(atomic_numbers))
    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # U matrices and buffers built in float64, as mace_run_train does
    try:
        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=num_bessel, num_polynomial_cutoff=5, max_ell=max_ell, interaction_cls=block,
            interaction_cls_first=modules.interaction_classes[first_block], num_interactions=num_interactions,
            num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps(hidden_irreps), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=-np.linspace(1.0, 3.0, len(atomic_numbers)), avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=atomic_numbers, correlation=correlation, gate=torch.nn.functional.silu,
            radial_MLP=list(radial_mlp), atomic_inter_scale=scale_shift[0], atomic_inter_shift=scale_shift[1], **extra,
        )
    finally:
        torch.set_default_dtype(previous_dtype)
    return model.double()
