"""The JAX MACE as a jaxmat force field: many periodic systems per call, one compiled program.

Neighbour lists come from :mod:`jaxmat.forcefields.neighbors` (full list, periodic images, so cells
smaller than the cutoff work); atoms, edges and systems are padded to a few bucket sizes so a
relaxation whose batch changes (systems leaving and joining) reuses the same compiled shapes.
:meth:`MACEJax.device_model` is the same energy for the device relaxation loop.

Precision (``dtype``): "float64" (default, exact), "float32", or "mixed" - an optional acceleration, off by
default: params and every model operation in float32, while positions, cells, periodic shifts, the edge
vectors (subtracted in float64, then cast), the per-system sums of node energies, the E0s and the gradient
sums back into forces and stress stay in float64, as do the outputs (LAMMPS's "mixed" precision).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import DEFAULT_CHARGE, DEFAULT_SPIN, ForceFieldOutput, SystemBatch, batch_from_atoms
from jaxmat.forcefields.mace.model import energy_forces_stress
from jaxmat.forcefields.mace.ops import outgoing_slots
from jaxmat.forcefields.mace.product_basis import checked_block
from jaxmat.forcefields.mace_models import choose_head
from jaxmat.forcefields.neighbors import (
    neighbor_matrix,
    pad_neighbor_matrix,
    slot_shifts,
)
from jaxmat.padding import bucket
from jaxmat.precision import float64_scope


DTYPES = {"float64": ("float64", "float64"), "float32": ("float32", "float32"), "mixed": ("float64", "float32")}
"""dtype name -> (geometry, sums and outputs; params and model operations)"""


class MACEJax:
    """Force field from a JAX MACE (config, params); ``MACEJax.from_torch(path)`` or ``MACEJax.load(dir)``."""

    def __init__(self, config: dict, params, dtype: str = "float64", head: str | None = None,
                 matmul_precision: str = "highest", contraction_block: int = 1):
        """dtype: a name in :data:`DTYPES` (the module docstring). matmul_precision: "highest" (default)
        multiplies float32 matrices in full float32, as mace-torch does; "default" lets XLA use TensorFloat-32
        on NVIDIA GPUs, faster but measured 1e-3 eV/atom and 0.06-0.14 eV/Å off mace-torch on an H200
        (benchmarks/gpu). It applies to float32 and "mixed"; no effect in float64 or on CPU. contraction_block:
        monomials of the product basis per loop step (1, default: one at a time, the fastest form on CPU; e.g. 64:
        fewer, larger steps, meant for GPUs where each step is a kernel launch; not yet timed on one); same numbers
        up to summation order. head: the head of a multi-head model (default: the only one, else the one named
        "default", as mace-torch's calculator chooses)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if matmul_precision not in ("highest", "high", "default"):
            raise ValueError(f"matmul_precision must be highest, high or default, not {matmul_precision!r}")
        self.matmul_precision = matmul_precision
        self.contraction_block = checked_block(contraction_block, "contraction_block")
        self.config = config
        self.dtype, self.compute_dtype = (jnp.dtype(name) for name in DTYPES[dtype])  # geometry and sums; model
        self.float64 = self.dtype == jnp.float64  # float64 work runs in jaxmat.precision.float64_scope, not a global switch
        with float64_scope(self.float64):
            self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.compute_dtype), params)
        self.r_max = float(config["r_max"])
        self.heads = list(config["heads"])
        self.head = choose_head(self.heads, head)  # mace-torch's calculator rule; an unknown head is an input error
        self.head_index = self.heads.index(self.head)
        self.supported_numbers = frozenset(int(z) for z in config["atomic_numbers"])
        self._species_of = np.full(119, -1, np.int32)
        self._species_of[np.asarray(config["atomic_numbers"])] = np.arange(len(config["atomic_numbers"]))
        self._evaluate = jax.jit(functools.partial(energy_forces_stress, config=config, head=self.head_index,
                                                   compute_dtype=self.compute_dtype, contraction_block=self.contraction_block),
                                 static_argnames=("n_systems",))
        self.compiled_shapes: list[tuple[int, int, int]] = []  # (atoms, neighbour slots, systems) seen so far

    def _padded_shape(self, n_atoms: int, max_neighbors: int, n_systems: int) -> tuple[int, int, int]:
        """Reuse a shape already compiled when it fits with at most 2x padding, else a new bucket:
        a batch that shrinks as structures converge then costs a few compilations, not one per size."""
        needed = (bucket(n_atoms + 1), bucket(max(max_neighbors, 1), 4), bucket(n_systems + 1, 2))
        fitting = [shape for shape in self.compiled_shapes
                   if all(have >= need for have, need in zip(shape, needed)) and shape[0] * shape[1] <= 2 * needed[0] * needed[1]]
        if fitting:
            return min(fitting, key=lambda shape: shape[0] * shape[1])
        self.compiled_shapes.append(needed)
        return needed

    @classmethod
    def from_torch(cls, path_or_module, **kwargs) -> "MACEJax":
        from jaxmat.forcefields.mace.convert import from_torch

        config, params = from_torch(path_or_module)
        return cls(config, params, **kwargs)

    @classmethod
    def load(cls, directory: str | Path, **kwargs) -> "MACEJax":
        from jaxmat.forcefields.mace.io import load

        config, params = load(directory)
        return cls(config, params, **kwargs)

    def species(self, numbers) -> np.ndarray:
        species = self._species_of[np.asarray(numbers)]
        if np.any(species < 0):
            missing = sorted(set(int(z) for z in np.asarray(numbers)[species < 0]))
            raise ValueError(f"elements with atomic numbers {missing} are not in this MACE model {sorted(self.supported_numbers)}")
        return species

    def padded_inputs(self, batch: SystemBatch):
        """Device arrays for ``energy_forces_stress``: a neighbour matrix (K slots per atom, receivers
        as rows) with atoms, slots and systems padded to bucket sizes."""
        n_atoms, n_systems = len(batch.numbers), batch.n_systems
        matrix = neighbor_matrix(batch, self.r_max, n_atoms + 1)
        atoms_size, slots, systems_size = self._padded_shape(n_atoms, matrix.slots_needed, n_systems)
        matrix = pad_neighbor_matrix(matrix, n_atoms, atoms_size, slots)
        pad_atoms = atoms_size - n_atoms
        dummy_system = systems_size - 1  # padding atoms belong to a system nobody reads
        system_index = np.concatenate([batch.system_index, np.full(pad_atoms, dummy_system)]).astype(np.int32)
        cells = np.concatenate([batch.cells, np.tile(np.eye(3), (systems_size - n_systems, 1, 1))])
        with float64_scope(self.float64):
            as_dtype = lambda a: jnp.asarray(a, self.dtype)
            return dict(
                positions=as_dtype(np.concatenate([batch.positions, np.zeros((pad_atoms, 3))])),
                species=jnp.asarray(np.concatenate([self.species(batch.numbers), np.zeros(pad_atoms, np.int32)])),
                cells=as_dtype(cells), system_index=jnp.asarray(system_index), neighbors=jnp.asarray(matrix.neighbors),
                shifts=as_dtype(np.asarray(slot_shifts(matrix.translations, cells, system_index))),
                neighbor_mask=jnp.asarray(matrix.mask), outgoing_slots=jnp.asarray(outgoing_slots(matrix.neighbors, matrix.mask)),
                n_systems=systems_size, **self._system_features(batch, systems_size),
            )

    def _system_features(self, batch: SystemBatch, systems_size: int) -> dict:
        """{"system_features": per-system total charge and spin} for a model with a joint embedding (else {}), padded
        with mace-torch's defaults; a value outside an embedding table is an error naming the structure."""
        if "joint_embedding" not in self.config:
            return {}
        charge, spin = batch.charges_and_spins()
        values = {"total_charge": charge, "total_spin": spin}
        for spec, weights in zip(self.config["joint_embedding"]["specs"], self.params["joint_embedding"]["embedders"]):
            if spec["type"] == "categorical":
                index = np.trunc(values[spec["name"]] + spec["offset"])
                bad = np.flatnonzero((index < 0) | (index >= weights["table"].shape[0]))
                if len(bad):
                    raise ValueError(f"structure {int(bad[0])}: {spec['name']} {values[spec['name']][bad[0]]:g} is outside this "
                                     f"model's embedding ({weights['table'].shape[0]} classes from {-spec['offset']:g})")
        pad = systems_size - batch.n_systems
        padded = {"total_charge": np.concatenate([charge, np.full(pad, DEFAULT_CHARGE)]),
                  "total_spin": np.concatenate([spin, np.full(pad, DEFAULT_SPIN)])}
        return {"system_features": {k: jnp.asarray(v, self.dtype) for k, v in padded.items()}}

    def evaluate_padded(self, inputs: dict):
        """Device arrays energy (S,) eV, forces (N, 3) eV/Å, stress (S, 3, 3) eV/Å^3 for ``padded_inputs(batch)``
        (padding rows included), traced at this force field's matmul precision (a scoped setting)."""
        with jax.default_matmul_precision(self.matmul_precision), float64_scope(self.float64):
            return self._evaluate(self.params, **inputs)

    def hessian(self, atoms) -> np.ndarray:
        """Second derivatives of the energy with respect to the positions of one structure, (N, 3, N, 3) eV/Å^2:
        ``jax.jacfwd`` of minus the forces, through the model with JAX's own derivatives (the hand-written VJPs of
        the fast path have no forward-mode rule). For phonons and Hessian-based checks."""
        inputs = self.padded_inputs(batch_from_atoms([atoms]))
        n_atoms = len(atoms)
        config, head, dtype, block = self.config, self.head_index, self.compute_dtype, self.contraction_block

        def forces(positions):
            arguments = {**inputs, "positions": positions}
            return energy_forces_stress(self.params, config, head=head, compute_dtype=dtype, contraction_block=block,
                                        custom_gradients=False, **arguments)[1]

        with jax.default_matmul_precision(self.matmul_precision), float64_scope(self.float64):
            hessian = -jax.jit(jax.jacfwd(forces))(inputs["positions"])
        return np.asarray(hessian, np.float64)[:n_atoms, :, :n_atoms, :]

    @property
    def supports_device_loop(self) -> bool:
        """The device loop carries no per-structure charge and spin: models that embed them run in the host loop."""
        return "joint_embedding" not in self.config

    @property
    def cutoff(self) -> float:
        """The interaction cutoff (Å): the model's r_max."""
        return self.r_max

    def device_species(self, numbers) -> np.ndarray:
        """Per-atom species indices (into the model's element list) for :meth:`device_model`."""
        return self.species(numbers)

    def device_settings(self) -> tuple:
        """What :meth:`device_model`'s program depends on besides params: a compiled loop is keyed by it."""
        return (self.matmul_precision, str(self.dtype), str(self.compute_dtype), self.contraction_block, self.head_index)

    def device_model(self):
        """(params, energy_forces_stress(params, graph)) for the device relaxation loop: graph holds
        positions, cells, species, system_index, neighbors, translations, mask, outgoing (padded)."""
        config, head, precision, dtype = self.config, self.head_index, self.matmul_precision, self.dtype
        float64, compute_dtype, block = self.float64, self.compute_dtype, self.contraction_block

        def evaluate(params, graph):
            with jax.default_matmul_precision(precision), float64_scope(float64):
                positions, cells = graph["positions"].astype(dtype), graph["cells"].astype(dtype)
                shifts = slot_shifts(graph["translations"], cells, graph["system_index"])
                out = energy_forces_stress(params, config, positions, graph["species"], cells, graph["system_index"],
                                           graph["neighbors"], shifts, graph["mask"], cells.shape[0], head, graph["outgoing"],
                                           compute_dtype, block)
                return tuple(x.astype(graph["positions"].dtype) for x in out)

        return self.params, evaluate

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceFieldOutput:
        n_atoms, n_systems = len(batch.numbers), batch.n_systems
        energy, forces, stress = self.evaluate_padded(self.padded_inputs(batch))  # each runs in this model's precision
        return ForceFieldOutput(
            np.asarray(energy, np.float64)[:n_systems], np.asarray(forces, np.float64)[:n_atoms],
            np.asarray(stress, np.float64)[:n_systems] if compute_stress else None,
        )
