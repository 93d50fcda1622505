"""Data-parallel PolySRL training over a 1-D device mesh, with the one-device run's numbers.

The soft contrastive loss couples every row of a batch with every other, so the batch cannot be split
into independent losses. Instead each global batch (the rows and order of the one-device run) is cut
into D contiguous per-device chunks of ``batch_size / D`` rows, each padded to one common shape and
stacked on a leading axis sharded over ``Mesh(devices, ("data",))``. The compiled step (``shard_map``):

1. encodes the device's chunk (``model.encode``) and keeps the VJP of that encoding;
2. ``all_gather``s mu, log-sigma and structure embeddings of every device and puts the rows back in
   global order (a static index), giving exactly the one-device step's (batch_size + 1)-row arrays;
3. computes the loss of the global batch as the one-device step does (same noise: drawn for the global
   batch from the replicated step key; same formula ids and row mask), identically on every device,
   with its gradient w.r.t. the gathered embeddings and the loss scalars (c, b);
4. pulls the device's rows of that cotangent back through its encoder VJP and ``psum``s the encoder
   gradients, so every device holds the full gradient and applies the same optax update to its copy of
   the replicated parameters and optimiser state.

Per step, the communication is one all-gather of 3 x (batch_size + D) x hidden embedding values and one
all-reduce of the parameter gradients (see docs/scaling.md). In several processes each one builds the
batches of its own devices only (all of them read the same dataset index, which fixes the rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmat.errors import ConfigError
from jaxmat.polysrl.config import ModelConfig
from jaxmat.polysrl.graphs.batching import formula_ids
from jaxmat.polysrl.model import encode, loss_from_embeddings, sample_noise
from jaxmat.polysrl.training import TrainState, step_metrics

AXIS = "data"


def device_chunks(chunk: np.ndarray, n_devices: int, per_device: int) -> list[np.ndarray]:
    """Row indices of each device's contiguous part of one global batch (the last batch may leave
    trailing devices empty)."""
    return [chunk[d * per_device:(d + 1) * per_device] for d in range(n_devices)]


def gather_index(batch_size: int, per_device: int) -> np.ndarray:
    """Slot in the gathered (D * (per_device + 1)) rows of each of the one-device batch's batch_size + 1
    rows: global row r is row r % per_device of device r // per_device; the last (padding) row takes
    device 0's padding slot."""
    rows = np.arange(batch_size)
    return np.concatenate([(rows // per_device) * (per_device + 1) + rows % per_device, [per_device]])


def make_parallel_step(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, batch_size: int,
                       reduce_gradients: bool = True):
    """The step (state, device_batches, formula_ids, mask, key_data) -> (state, metrics) over ``mesh``;
    wrap with jax.jit. ``reduce_gradients=False`` leaves out the psum (only to show that tests catch it)."""
    n_devices = mesh.devices.size
    per_device = batch_size // n_devices
    source = gather_index(batch_size, per_device)

    def local_rows(cotangent, device):
        """This device's slots of a global-row cotangent (its padding slot gets none)."""
        mine = jax.lax.dynamic_slice_in_dim(cotangent, device * per_device, per_device)
        return jnp.concatenate([mine, jnp.zeros((1,) + cotangent.shape[1:], cotangent.dtype)])

    def step(state: TrainState, batch, ids, mask, key_data):
        batch = jax.tree_util.tree_map(lambda x: x[0], batch)  # this device's chunk
        eps = sample_noise(config, jax.random.wrap_key_data(key_data), batch_size + 1)
        embeddings, pull_back = jax.vjp(lambda params: encode(params, config, batch), state.params)
        gathered = tuple(None if x is None else jax.lax.all_gather(x, AXIS, tiled=True)[source] for x in embeddings)
        scalars = {"shift": state.params["shift"], "negative_scale": state.params["negative_scale"]}

        def global_loss(scalars, rows):
            return loss_from_embeddings(config, *rows, scalars["shift"][0], scalars["negative_scale"][0], ids, mask, eps)

        (_, (parts, outputs)), (scalar_grads, row_grads) = jax.value_and_grad(global_loss, (0, 1), has_aux=True)(scalars, gathered)
        device = jax.lax.axis_index(AXIS)
        (encoder_grads,) = pull_back(tuple(None if g is None else local_rows(g, device) for g in row_grads))
        if reduce_gradients:
            encoder_grads = jax.lax.psum(encoder_grads, AXIS)
        grads = {**encoder_grads, **scalar_grads}  # encode() does not touch shift / negative_scale
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = step_metrics(parts, outputs, mask, grads, params)
        return TrainState(params, opt_state, state.step + 1), metrics

    return jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P(), P(), P()), out_specs=(P(), P()), check_vma=False)


def make_mesh(devices=None) -> Mesh:
    """1-D mesh ("data") over these devices (default: every device of every process)."""
    return Mesh(np.array(list(jax.devices() if devices is None else devices)), (AXIS,))


def replicate(tree, mesh: Mesh):
    """Host values (the same in every process) -> arrays replicated on every device of ``mesh``."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def check_divisible(batch_size: int, n_devices: int) -> None:
    """The batch is split evenly over the devices (ConfigError otherwise)."""
    if batch_size % n_devices:
        raise ConfigError(f"train.batch_size {batch_size} is not divisible by the {n_devices} devices of the run: "
                          f"use a multiple of {n_devices}, or fewer devices (CUDA_VISIBLE_DEVICES, run_training(devices=...))")


class DataParallel:
    """Batches and the compiled step of data-parallel training over ``devices`` (default: every process's).

    ``padding_chunks``: the row-index batches whose device parts fix the one padded shape (the trainer
    passes those of its padding horizon, so a resume gets the same shape).
    """

    def __init__(self, config: ModelConfig, optimizer, dataset, batch_size: int, dtype, padding_chunks, devices=None,
                 reduce_gradients: bool = True):
        devices = list(jax.devices() if devices is None else devices)
        self.n_devices = len(devices)
        check_divisible(batch_size, self.n_devices)
        self.mesh = make_mesh(devices)
        self.dataset, self.batch_size, self.dtype = dataset, batch_size, dtype
        self.per_device = batch_size // self.n_devices
        self.padding = dataset.padding([part for chunk in padding_chunks
                                        for part in device_chunks(chunk, self.n_devices, self.per_device) if len(part)])
        self.mine = [d for d, device in enumerate(devices) if device.process_index == jax.process_index()]
        self._step = jax.jit(make_parallel_step(config, optimizer, self.mesh, batch_size, reduce_gradients), donate_argnums=0)

    def device_batches(self, chunk: np.ndarray):
        """The global (D, ...) batch arrays sharded over the mesh; this process builds its devices' parts only."""
        parts = device_chunks(np.asarray(chunk), self.n_devices, self.per_device)
        local = {d: self.dataset.batch(parts[d] if len(parts[d]) else chunk[:1], self.per_device, self.dtype, self.padding)
                 for d in self.mine}  # an empty part (short last batch) holds a dummy row: its rows are masked
        sharding = NamedSharding(self.mesh, P(AXIS))
        devices = list(self.mesh.devices.flat)

        def stack(*leaves):
            shape = (self.n_devices,) + leaves[0].shape
            arrays = [jax.device_put(leaf[None], devices[d]) for d, leaf in zip(self.mine, leaves)]
            return jax.make_array_from_single_device_arrays(shape, sharding, arrays)

        return jax.tree_util.tree_map(stack, *[local[d] for d in self.mine])

    def step(self, state: TrainState, chunk: np.ndarray, step_key):
        """One optimiser step on the global batch of rows ``chunk`` (the one-device run's rows and order)."""
        ids = formula_ids([self.dataset.formulas[i] for i in chunk], self.batch_size + 1)
        mask = np.zeros(self.batch_size + 1, bool)
        mask[: len(chunk)] = True
        key_data = np.asarray(jax.random.key_data(step_key))
        return self._step(state, self.device_batches(chunk), *replicate((ids, mask, key_data), self.mesh))
