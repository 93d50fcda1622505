"""Seconds to all-reduce N float32 values between processes (the gradient psum of data-parallel training).

    python benchmarks/allreduce.py --coordinator localhost:PORT --num-processes 2 --process-id I [--values 3222010]

Run one per process (CPU: gloo over TCP). Prints JSON from process 0: median of --repeat psums after a warm-up.
"""

import argparse
import json
import time

import jax
import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--values", type=int, default=3222010)  # PolySRL's parameters at hidden 200
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmat import distributed
    from jaxmat.polysrl.parallel import make_mesh

    distributed.use_cpu_collectives()
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = make_mesh()
    local = np.ones((1, args.values), np.float32)
    devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    x = jax.make_array_from_single_device_arrays((mesh.size, args.values), NamedSharding(mesh, P("data")),
                                                 [jax.device_put(local, d) for d in devices])
    psum = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "data"), mesh=mesh, in_specs=P("data"), out_specs=P(),
                                 check_vma=False))
    jax.block_until_ready(psum(x))
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        jax.block_until_ready(psum(x))
        times.append(time.perf_counter() - started)
    if jax.process_index() == 0:
        print(json.dumps({"processes": mesh.size, "values": args.values, "bytes": 4 * args.values,
                          "median_seconds": float(np.median(times))}))


if __name__ == "__main__":
    main()
