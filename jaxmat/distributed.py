"""JAX's multi-process runtime for jaxmat's commands: start it, check the processes agree, wait for each other.

``python -m jaxmat.train --distributed`` and ``python -m jaxmat.relax --distributed`` call
:func:`initialize` before any JAX array is made. Coordinator address, process count and process id come
from the flags, or (left out) from the cluster environment ``jax.distributed.initialize`` reads (SLURM,
Open MPI, Kubernetes ...). After it, ``jax.devices()`` lists every process's devices and
``jax.process_index()`` names this process.

Only entry points call :func:`initialize` and :func:`use_cpu_collectives` (they change process-wide JAX
state); library code asks :func:`process_index` / :func:`process_count` and calls :func:`barrier` and
:func:`check_same`, which are no-ops in a single process. Training joins every process's devices into
one mesh; relaxation (``join_devices=False``) only shares the coordination service: its shards never
communicate, and each process's force field and optimizer stay on its own devices.

The key-value store and barriers are those of the distributed client (``jax._src.distributed``): JAX
has no public name for them yet.
"""

from __future__ import annotations

import json
import socket
import time

import jax

from jaxmat.errors import ConfigError, JaxmatInputError

DEFAULT_TIMEOUT_S = 300  # seconds to reach the coordinator / to wait for the other processes
_COORDINATION: dict = {}  # coordinate-only mode: client, service, index, count


def add_arguments(parser) -> None:
    """The --distributed flags of a command (argparse)."""
    group = parser.add_argument_group("more than one process (JAX distributed runtime)")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run (flags below, else the cluster environment, e.g. SLURM)")
    group.add_argument("--coordinator", help="HOST:PORT of process 0's coordinator")
    group.add_argument("--num-processes", type=int, help="number of processes")
    group.add_argument("--process-id", type=int, help="this process's id, 0 .. num-processes - 1")
    group.add_argument("--distributed-timeout", type=int, default=DEFAULT_TIMEOUT_S,
                       help="seconds to wait for the coordinator and the other processes (default %(default)s)")


def use_cpu_collectives() -> None:
    """Collectives between CPU processes go through gloo (XLA's CPU default has none across processes).
    Process-wide JAX setting: entry points only, before :func:`initialize`."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = DEFAULT_TIMEOUT_S, join_devices: bool = True) -> None:
    """Start (process 0) or join the JAX distributed runtime; clear errors for partial flags or no coordinator.

    All three of coordinator, num_processes and process_id, or none of them (then the cluster environment
    gives them). ``timeout_s``: seconds to wait for the coordinator and every process to connect.
    ``join_devices=False`` (relaxation): only the coordination service (key-value store, barriers); each
    process's JAX keeps its own devices, so nothing compiled for one process spans another's devices.
    """
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise JaxmatInputError("--coordinator, --num-processes and --process-id go together (or none of them, "
                               "to read the cluster environment)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise JaxmatInputError(f"--process-id {process_id} is not in 0 .. {num_processes - 1}")
    if coordinator is not None and process_id != 0:
        wait_for_coordinator(coordinator, timeout_s)
    if not join_devices:
        return _coordinate_only(coordinator, num_processes, process_id, timeout_s)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=int(timeout_s))
    except ValueError as exc:  # no flags and no cluster environment found
        raise JaxmatInputError(f"cannot start the distributed runtime: {exc}") from exc
    except Exception as exc:  # the runtime's error for a coordinator it never reached (DEADLINE_EXCEEDED ...)
        where = coordinator or "the coordinator of the cluster environment"
        raise JaxmatInputError(f"could not reach {where} within {timeout_s} s as process {process_id} of "
                               f"{num_processes}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _coordinate_only(coordinator, num_processes, process_id, timeout_s) -> None:
    """The coordination service and client of jax.distributed.initialize without the device backend."""
    import atexit

    from jax._src import clusters
    from jax._src.lib import _jax

    if coordinator is None:
        coordinator, num_processes, process_id, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            None, None, None, None, None, int(timeout_s))
        if coordinator is None:
            raise JaxmatInputError("cannot start the distributed runtime: no --coordinator and no cluster environment found")
        if process_id != 0:
            wait_for_coordinator(coordinator, timeout_s)
    service = None
    if process_id == 0:
        service = _jax.get_distributed_runtime_service("[::]:" + coordinator.rsplit(":", 1)[1], num_processes)
    client = _jax.get_distributed_runtime_client(coordinator, process_id, init_timeout=int(timeout_s), use_compression=True)
    try:
        client.connect()
    except Exception as exc:
        raise JaxmatInputError(f"could not connect to the coordinator {coordinator} within {timeout_s} s as process "
                               f"{process_id} of {num_processes}: {str(exc).splitlines()[0]}") from exc
    _COORDINATION.update(client=client, service=service, index=int(process_id), count=int(num_processes))

    def shut_down():  # waits for every process (the service lives in process 0)
        client.shutdown()
        if service is not None:
            service.shutdown()

    atexit.register(shut_down)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once HOST:PORT accepts a TCP connection; JaxmatInputError after ``timeout_s`` seconds.

    Checked before joining because the runtime's own connection timeout aborts the process (a fatal
    C++ check, exit status 134) instead of raising an error Python could report.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise JaxmatInputError(f"--coordinator must be HOST:PORT, got {address!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise JaxmatInputError(f"could not reach the coordinator {address} within {timeout_s} s ({exc}); "
                                       f"is process 0 running, and is the address reachable from here?") from exc
            time.sleep(0.2)


def initialize_from_args(args, join_devices: bool = True) -> None:
    """:func:`initialize` from the flags of :func:`add_arguments` when --distributed is given; CPU runs get
    gloo collectives first."""
    if not args.distributed:
        if any(x is not None for x in (args.coordinator, args.num_processes, args.process_id)):
            raise JaxmatInputError("--coordinator/--num-processes/--process-id need --distributed")
        return
    if join_devices:
        use_cpu_collectives()  # read by CPU devices only: harmless on GPU hosts
    initialize(args.coordinator, args.num_processes, args.process_id, args.distributed_timeout, join_devices)


def process_index() -> int:
    """This process's index (0 in a single process)."""
    return _COORDINATION["index"] if _COORDINATION else jax.process_index()


def process_count() -> int:
    """Number of processes of the run (1 without --distributed)."""
    return _COORDINATION["count"] if _COORDINATION else jax.process_count()


def _client():
    if _COORDINATION:
        return _COORDINATION["client"]
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def barrier(name: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Wait until every process reaches the barrier ``name`` (unique per use); no-op in one process."""
    if process_count() == 1:
        return
    try:
        _client().wait_at_barrier(f"jaxmat/{name}", int(timeout_s * 1000))
    except Exception as exc:
        raise RuntimeError(f"not every process reached {name!r} (a process died or {timeout_s} s passed); rerun "
                           f"every process with the same command: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _differing_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


def check_same(name: str, value, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Raise ConfigError in every process unless all processes passed an equal ``value`` (a JSON-able
    mapping, compared through the coordinator's key-value store, the differing keys named); no-op in one
    process."""
    if process_count() == 1:
        return
    client, me = _client(), process_index()
    mine = json.loads(json.dumps(value, sort_keys=True, default=str))
    client.key_value_set(f"jaxmat/check/{name}/{me}", json.dumps(mine, sort_keys=True))
    for other in range(process_count()):
        try:
            theirs = json.loads(client.blocking_key_value_get(f"jaxmat/check/{name}/{other}", int(timeout_s * 1000)))
        except Exception as exc:
            raise RuntimeError(f"process {other} did not report its {name} within {timeout_s} s") from exc
        differing = _differing_keys(mine, theirs)
        if differing:
            raise ConfigError(f"processes started with different {name}: process {me} and process {other} differ in "
                              f"{', '.join(differing[:5])}; start every process with the same flags")
