"""Numbers for docs/scaling.md: PolySRL step time vs the bytes data parallelism moves per step.

    python benchmarks/polysrl_scaling.py [--batch 256] [--hidden 200] [--limit 512] [--dtype float32]

Prints JSON: parameter count and bytes (all-reduced per step), embedding bytes all-gathered per step,
the one-device step time (encoders + loss + Adam) and the time of the global-batch loss alone (which
every device computes redundantly), each the median of --repeat timed calls after compilation.
"""

import argparse
import json
import time

import jax
import numpy as np


def median_seconds(function, repeat):
    jax.block_until_ready(function())  # compile
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from jaxmat.polysrl.config import ModelConfig
    from jaxmat.polysrl.dataset import build_dataset
    from jaxmat.polysrl.model import encode, init_params, loss_from_embeddings, sample_noise
    from jaxmat.polysrl.training import TrainState, make_optimizer, make_train_step
    from jaxmat.precision import use_float64

    use_float64(args.dtype == "float64")
    config = ModelConfig(hidden=args.hidden, dtype=args.dtype)
    dtype = np.dtype(args.dtype)
    dataset = build_dataset({"source": "embedded:heo", "limit": args.limit, "cutoff": 8.0, "max_neighbors": 12}, dtype=dtype)
    batch = dataset.batch(np.arange(min(args.batch, len(dataset))), args.batch, dtype)
    params = init_params(config, batch, jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    optimizer = make_optimizer()
    step = jax.jit(make_train_step(config, optimizer))
    state = TrainState(params, optimizer.init(params), np.zeros((), np.int64))
    key = jax.random.PRNGKey(1)
    step_s = median_seconds(lambda: step(state, batch, key), args.repeat)
    mu, logsigma, s = jax.jit(lambda p: encode(p, config, batch))(params)
    eps = sample_noise(config, key, args.batch + 1)

    @jax.jit
    def loss_and_grad(mu, logsigma, s):
        def loss(rows):
            return loss_from_embeddings(config, *rows, 20.0, 20.0, batch.formula_ids, batch.graph_mask, eps)[0]
        return jax.value_and_grad(loss)((mu, logsigma, s))

    loss_s = median_seconds(lambda: loss_and_grad(mu, logsigma, s), args.repeat)
    print(json.dumps({
        "device": str(jax.devices()[0]), "batch": args.batch, "rows_in_data": len(dataset), "hidden": args.hidden,
        "dtype": args.dtype, "parameters": int(n_params), "parameter_bytes_all_reduced": int(n_params * dtype.itemsize),
        "embedding_bytes_all_gathered_per_device": int(3 * (args.batch + 1) * args.hidden * dtype.itemsize),
        "step_seconds": step_s, "global_loss_and_grad_seconds": loss_s,
        "atoms_in_batch": int(sum(len(dataset.crystals[i].numbers) for i in range(min(args.batch, len(dataset))))),
    }))


if __name__ == "__main__":
    main()
