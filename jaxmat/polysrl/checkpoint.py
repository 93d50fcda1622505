"""Orbax checkpoints of PolySRL training: params + optimiser state + step + epoch + RNG keys.

Each checkpoint's meta carries a checksum of its arrays. A checkpoint that cannot be read or whose
arrays do not match their checksum (a damaged disk, a copy cut short) is skipped with a warning naming
its epoch, and the previous good one is used; training moves the bad one aside to
WORKDIR/checkpoints-corrupt/ so the epoch can be saved again. A checkpoint whose write was interrupted
never becomes visible (orbax writes to a temporary name and renames it when complete); its leftovers are
removed when training starts again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxmat.errors import JaxmatInputError

log = logging.getLogger("jaxmat.checkpoint")


class CheckpointError(JaxmatInputError):
    """No usable checkpoint: none is readable, or the one asked for is damaged."""


def checkpoint_manager(workdir, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """Manager of WORKDIR/checkpoints, one checkpoint per epoch (step number = epoch). A writing manager
    removes the temporary folders of interrupted saves; a reading one (read_only) neither creates, cleans
    nor deletes anything."""
    directory = Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only)  # (orbax's read_only logs warnings)
    return ocp.CheckpointManager(directory, options=options)


def tree_checksum(tree) -> str:
    """SHA-256 of the arrays of a tree, independent of container types, leaf order and integer/float width
    (a restored tree compares equal to the saved one)."""
    digests = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # replicated over processes: one copy
            leaf = leaf.addressable_shards[0].data
        array = np.asarray(leaf)
        array = np.ascontiguousarray(array.astype(np.float64 if array.dtype.kind in "fc" else np.int64))
        digests.append(hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


def save_checkpoint(manager: ocp.CheckpointManager, epoch: int, state, meta: dict) -> None:
    """Save and wait until the checkpoint is complete on disk (orbax writes to a temporary name, then renames)."""
    meta = {**meta, "checksum": tree_checksum(state)}
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def _read(manager, epoch: int, abstract):
    """(state, meta) of one epoch; raises CheckpointError naming the epoch when it is unreadable or damaged."""
    path = Path(manager.directory) / str(epoch)
    try:
        restore = ocp.args.StandardRestore(abstract) if abstract is not None else ocp.args.StandardRestore()
        restored = manager.restore(epoch, args=ocp.args.Composite(state=restore, meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], restored["meta"]
    except Exception as error:  # orbax / tensorstore / json raise many kinds for a damaged folder
        raise CheckpointError(f"checkpoint of epoch {epoch} ({path}) is unreadable: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}"[:400]) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint of epoch {epoch} ({path}) has no metadata")
    if "checksum" in meta and tree_checksum(state) != meta["checksum"]:
        raise CheckpointError(f"checkpoint of epoch {epoch} ({path}) is corrupted: its arrays do not match their checksum")
    return state, meta


def _quarantine(manager, epoch: int) -> Path:
    """Move a damaged checkpoint to WORKDIR/checkpoints-corrupt/EPOCH-TIME, out of orbax's way."""
    source = Path(manager.directory) / str(epoch)
    target = Path(manager.directory).parent / "checkpoints-corrupt" / f"{epoch}-{time.strftime('%Y%m%dT%H%M%S')}"
    if jax.process_index() == 0:  # several processes share the folder: the first one moves it
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
    manager.reload()
    return target


def _first_good(manager, epochs: list[int], abstract, move_aside: bool):
    """(state, meta, epoch) of the newest readable epoch, warning about each damaged one skipped (moved
    aside, when asked, once a good one is found: with none, nothing is moved)."""
    problems, bad = [], []
    for epoch in sorted(epochs, reverse=True):
        try:
            state, meta = _read(manager, epoch, abstract)
        except CheckpointError as error:
            problems.append(str(error))
            bad.append(epoch)
            continue
        for skipped, problem in zip(bad, problems):
            where = f"; moved to {_quarantine(manager, skipped)}" if move_aside else ""
            log.warning("%s; falling back to the checkpoint of epoch %d%s", problem, epoch, where)
        return state, meta, epoch
    if problems:
        raise CheckpointError(f"no readable checkpoint in {manager.directory}: " + "; ".join(problems))
    return None


def restore_checkpoint(manager: ocp.CheckpointManager, target, epoch: int | None = None, move_aside: bool = True):
    """(state, meta) of the given (default: latest good) epoch, shaped like ``target``; None if there is none.

    A damaged latest checkpoint is skipped with a warning (and moved aside when ``move_aside``), the
    previous one used; a damaged epoch asked for by number raises CheckpointError."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    if epoch is not None:
        return _read(manager, epoch, abstract)
    found = _first_good(manager, list(manager.all_steps()), abstract, move_aside)
    return None if found is None else found[:2]


def restore_params(workdir, epoch: int | None = None) -> tuple[dict, dict, int]:
    """(params, meta, epoch) from WORKDIR/checkpoints without knowing the optimiser: params only. The
    latest good checkpoint by default (damaged ones skipped with a warning, left in place)."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint in {directory}: is {workdir} a jaxmat training directory "
                              f"(python -m jaxmat.train --workdir {workdir})?")
    manager = checkpoint_manager(workdir, read_only=True)
    if epoch is not None:
        if epoch not in manager.all_steps():
            raise CheckpointError(f"no checkpoint of epoch {epoch} in {directory} (there are: {sorted(manager.all_steps())})")
        state, meta = _read(manager, epoch, None)
    else:
        found = _first_good(manager, list(manager.all_steps()), None, move_aside=False)
        if found is None:
            raise CheckpointError(f"no checkpoint in {directory}: training has not finished an epoch there")
        state, meta, epoch = found
    params = jax.tree_util.tree_map(np.asarray, state["train"]["params"])
    return params, meta, epoch
