"""Relaxation sharded by structures over the processes of a distributed run (no communication while relaxing).

Process p of P relaxes the input structures p, p + P, p + 2P, ... (those not done yet) with
:func:`jaxmat.relax.relax` and appends each finished frame to ``OUT.partial.<p>``. When every process is
done (a barrier), process 0 merges all partial logs, in input order, into OUT and deletes them. A rerun
after a kill (of one process or all) first takes every frame already in any ``OUT.partial*``, so nothing
is relaxed twice and nothing is lost, even with a different number of processes. One process (P = 1)
keeps the single ``OUT.partial`` of the plain command. Within a process, :func:`on_local_devices`
(``--per-device``) gives each local device its own share the same way.

OUT and its partial logs must be on a file system every process sees.
"""

from __future__ import annotations

import copy
import sys
import threading
from pathlib import Path

import jax

from jaxmat import distributed
from jaxmat.errors import JaxmatInputError
from jaxmat.files import read_frame_log, write_frames
from jaxmat.relax.results import RelaxResults

FINISH_TIMEOUT_S = 7 * 24 * 3600  # seconds the other processes may still be relaxing when one is done


def on_local_devices(relax, devices=None):
    """``relax`` made to split its structures over this process's devices: device k relaxes structures k,
    k + D, ... as its own whole-system batches (force field included), one thread per device with that
    device as JAX's default. ``on_result`` sees indices into the full list, one call at a time; the return
    value is every result in input order. One device: ``relax`` itself. Needs a JAX force field."""
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) == 1:
        return relax

    def run(structures, force_field, *args, on_result=None, names=None, progress=True, **kwargs):
        if not getattr(force_field, "supports_device_loop", False):
            raise JaxmatInputError("one relaxation shard per device needs a JAX force field (--backend jax, lj, morse)")
        lock, results, errors, stats = threading.Lock(), {}, [], {}

        def work(k):
            indices = list(range(k, len(structures), len(devices)))

            def report(result):
                result = copy.copy(result)
                result.index = indices[result.index]
                with lock:
                    results[result.index] = result
                    if on_result is not None:
                        on_result(result)

            try:
                with jax.default_device(devices[k]):
                    stats[k] = relax([structures[i] for i in indices], force_field, *args, on_result=report,
                                     names=None if names is None else [names[i] for i in indices],
                                     progress=progress and k == 0, **kwargs).stats
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(min(len(devices), len(structures)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        totals = {key: sum(part.get(key, 0) for part in stats.values()) for key in set().union(*stats.values())} if stats else {}
        totals["total_seconds"] = max((part.get("total_seconds", 0.0) for part in stats.values()), default=0.0)
        return RelaxResults([results[i] for i in range(len(structures))], totals)  # counts summed over the devices

    return run


def share(n_structures: int) -> list[int]:
    """Input indices this process relaxes: every P-th, from its process index."""
    return list(range(distributed.process_index(), n_structures, distributed.process_count()))


def partial_path(out) -> Path:
    """This process's append log: OUT.partial (one process) or OUT.partial.<process>."""
    out = Path(out)
    suffix = ".partial" if distributed.process_count() == 1 else f".partial.{distributed.process_index()}"
    return out.with_name(out.name + suffix)


def partial_logs(out) -> list[Path]:
    """Every append log of OUT on disk: OUT.partial and OUT.partial.<k> for any k."""
    out = Path(out)
    return sorted(p for p in out.parent.glob(out.name + ".partial*")
                  if p.name == out.name + ".partial" or p.name[len(out.name) + 9:].isdigit())


def frames_by_index(path: Path) -> dict:
    """The complete frames of one append log (input index -> Atoms), warning about a dropped truncated tail."""
    frames, dropped = read_frame_log(path)  # a truncated tail (a kill mid-append) is dropped
    if dropped:
        print(f"warning: dropped a truncated last frame ({dropped} bytes, an interrupted write) from {path}; "
              f"that structure is relaxed again", file=sys.stderr)
    return {int(atoms.info["input_index"]): atoms for atoms in frames}


def done_elsewhere(out, own: Path, timeout_s: int = distributed.DEFAULT_TIMEOUT_S) -> dict:
    """Frames finished by earlier runs in partial logs other than ``own`` (input index -> Atoms).

    Several processes: process 0 first cleans the logs nobody owns now (an earlier run with more
    processes); after a barrier each process reads the others' logs, and a second barrier keeps anyone
    from appending before all have read.
    """
    out = Path(out)
    count = distributed.process_count()
    owned = {own} if count == 1 else {out.with_name(f"{out.name}.partial.{k}") for k in range(count)}
    if distributed.process_index() == 0:
        for path in partial_logs(out):
            if path not in owned:
                read_frame_log(path)
    distributed.barrier("relax/cleaned", timeout_s)
    done = {}
    for path in partial_logs(out):
        if path != own:
            frames, _ = read_frame_log(path)
            done.update({int(atoms.info["input_index"]): atoms for atoms in frames})
    distributed.barrier("relax/read", timeout_s)
    return done


def finish(out, own: Path, done: dict, n_structures: int) -> bool:
    """Write OUT (input order) once every process is done; True in the process that wrote it.

    One process: OUT from ``done``, then its logs are deleted. Several: wait for all, then process 0
    reads every partial log (each structure is in one of them: the shares are disjoint and a rerun skips
    what any log holds), checks none is missing, writes OUT and deletes the logs.
    """
    out = Path(out)
    if distributed.process_count() > 1:
        distributed.barrier("relax/finished", FINISH_TIMEOUT_S)
        if distributed.process_index() != 0:
            return False
        for path in partial_logs(out):
            done.update(frames_by_index(path))
    missing = [i for i in range(n_structures) if i not in done]
    if missing:
        raise JaxmatInputError(f"structures {missing[:10]} of {n_structures} have no result in {out}.partial*; "
                               f"rerun the same command to relax them")
    write_frames(out, [done[i] for i in range(n_structures)])
    for path in partial_logs(out):
        path.unlink(missing_ok=True)
    return True
