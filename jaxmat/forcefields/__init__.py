"""Force fields behind one interface: energies per system (eV), forces per atom (eV/Å), stress per system (eV/Å^3)."""

from jaxmat.forcefields.base import ForceField, ForceFieldOutput, SystemBatch

__all__ = ["ForceField", "ForceFieldOutput", "SystemBatch"]
