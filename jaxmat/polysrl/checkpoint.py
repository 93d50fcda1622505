"""Orbax checkpoints of PolySRL training: params + optimiser state + step + epoch + RNG keys."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def checkpoint_manager(workdir, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """Manager of WORKDIR/checkpoints, one checkpoint per epoch (step number = epoch)."""
    directory = Path(workdir).absolute() / "checkpoints"
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save_checkpoint(manager: ocp.CheckpointManager, epoch: int, state, meta: dict) -> None:
    """Save and wait until the checkpoint is complete on disk (orbax writes to a temporary name, then renames)."""
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def restore_checkpoint(manager: ocp.CheckpointManager, target, epoch: int | None = None):
    """(state, meta) of the given (default latest) epoch, shaped like ``target``; None if there is none."""
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
        return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def restore_params(workdir, epoch: int | None = None) -> tuple[dict, dict, int]:
    """(params, meta, epoch) from WORKDIR/checkpoints without knowing the optimiser: params only."""
    manager = checkpoint_manager(workdir)
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    restored = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    params = jax.tree_util.tree_map(np.asarray, restored["state"]["train"]["params"])
    return params, restored["meta"], epoch
