"""Roofline of one JAX MACE force call: FLOPs, bytes and measured time per stage, forward and backward.

    python benchmarks/mace_roofline.py [--model PATH.model] [--case W1] [--repeats 5] [--ref GIT_REF] [--json out.json]

Each stage of ``model.node_energies`` is compiled on its own with the inputs it gets in the real call
(the W1 batch by default: 16 x 64-atom HEO cells with the shared small MACE, float64), and timed
forward alone and forward + backward (a VJP with a random cotangent, w.r.t. the inputs that depend on
the positions - what a force call differentiates). FLOPs and bytes come from XLA's cost analysis of
the compiled stage (bytes = operands and results of every HLO op, an upper bound on DRAM traffic).
The machine's roofs are measured in the same process: a float64 GEMM (2048^3) and a streaming
a*x + y over 64 MiB arrays. Also: host time (neighbour list, padding) and the whole compiled call.
"""

from __future__ import annotations

import argparse
import json
import time

import mace  # noqa: F401  (before e3nn)
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxmat.forcefields.base import batch_from_atoms  # noqa: E402
from jaxmat.forcefields.mace import model as mace_model, ops  # noqa: E402
from jaxmat.forcefields.mace.forcefield import MACEJax  # noqa: E402
try:
    from jaxmat.testing import workload  # noqa: E402
except ImportError:  # before the package reorganisation
    from jaxmat.heo.generate import workload  # noqa: E402


def timed(fn, args, repeats):
    """Median seconds of fn(*args) (compiled, after a warm-up call)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def cost(fn, args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def roofs(repeats):
    """Measured float64 GEMM rate (FLOP/s) and streaming bandwidth (B/s) of this machine."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)))
    gemm = timed(jax.jit(lambda a: a @ a), (a,), repeats)
    x = jnp.ones(8 * 2**20)
    y = jnp.ones(8 * 2**20)
    stream = timed(jax.jit(lambda x, y: 1.5 * x + y), (x, y), repeats)
    return 2 * 2048**3 / gemm, 3 * 8 * 8 * 2**20 / stream


def stage_functions(ff: MACEJax, inputs: dict):
    """(name, fn, args, differentiable argnums) for every stage, with the inputs of the real call."""
    config, params = ff.config, ff.params
    species, neighbors, mask = inputs["species"], inputs["neighbors"], inputs["neighbor_mask"]
    n, k = neighbors.shape
    pos, shifts = inputs["positions"], inputs["shifts"]
    vectors = pos[:, None, :] - pos[neighbors] + shifts
    far = jnp.asarray([2.0 * config["r_max"], 0.0, 0.0])
    vectors = jnp.where(mask[..., None], vectors, far).reshape(-1, 3)
    lengths = jnp.linalg.norm(vectors, axis=-1)

    def sh(v):
        return mace_model.spherical_harmonics(v, config["sh_lmax"])

    def radial(lengths, layer):
        r = ops.bessel_basis(lengths, jnp.asarray(config["bessel_frequencies"]), config["bessel_prefactor"])
        cut = ops.polynomial_cutoff(lengths, config["r_max"], config["num_polynomial_cutoff"]) * mask.reshape(-1, 1)
        inter = config["interactions"][layer]
        return ops.radial_mlp(params["interactions"][layer]["radial"], inter["radial_activation_scale"], r * cut)

    edge_sh = [y.reshape(n, k, -1) for y in sh(vectors)]
    stages = [("spherical harmonics", sh, (vectors,), (0,))]
    # node features entering each layer: run the real model once, layer by layer
    (w_embed,) = params["node_embedding"]
    node_feats = [config["node_embedding"]["path_weight"] * jnp.take(w_embed, species, axis=0)[:, None, :]]
    outgoing = inputs["outgoing_slots"]
    for layer, (inter_cfg, prod_cfg) in enumerate(zip(config["interactions"], config["products"])):
        ip, pp = params["interactions"][layer], params["products"][layer]
        stages.append((f"L{layer} radial basis + MLP", lambda l, layer=layer: radial(l, layer), (lengths,), (0,)))
        tp_w = radial(lengths, layer).reshape(n, k, -1)
        up = mace_model._linear(node_feats, inter_cfg["linear_up"], ip["linear_up"])
        stages.append((f"L{layer} linear_up + gather", lambda f, ip=ip, c=inter_cfg: [
            ops.gather_neighbors(b, neighbors, outgoing) for b in mace_model._linear(f, c["linear_up"], ip["linear_up"])],
            (node_feats,), (0,)))
        gathered = [ops.gather_neighbors(b, neighbors, outgoing) for b in up]

        def conv(g, y, w, c=inter_cfg):
            return ops.convolution(g, y, w, c["tp_paths"], config["cg"])

        stages.append((f"L{layer} edge TP + neighbour sum", conv, (gathered, edge_sh, tp_w), (0, 1, 2)))
        messages = conv(gathered, edge_sh, tp_w)
        messages = [m / inter_cfg["avg_num_neighbors"] for m in mace_model._linear(messages, inter_cfg["linear"], ip["linear"])]
        if not inter_cfg["residual"]:
            messages = mace_model._species_linear(messages, species, inter_cfg["skip"], ip["skip"])
        coupled = jnp.concatenate(messages, axis=1)
        psp = jnp.zeros_like(species) if prod_cfg["agnostic"] else species

        def product(x, pc=prod_cfg, pp=pp):
            return ops.symmetric_contraction(x, psp, pc["contractions"], pp["weights"])

        stages.append((f"L{layer} symmetric contraction", product, (coupled,), (0,)))
        sc = mace_model._species_linear(node_feats, species, inter_cfg["skip"], ip["skip"]) if inter_cfg["residual"] else None
        node_feats = mace_model._linear(product(coupled), prod_cfg["linear"], pp["linear"])
        if prod_cfg["use_sc"] and sc is not None:
            node_feats = [a + b for a, b in zip(node_feats, sc)]
    return stages


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/work/shared/models/mace_heo_chgnet_small.model")
    parser.add_argument("--case", default="W1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref", help="take ops.py and model.py from this git ref (the baseline of a change)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.ref:
        import sys

        sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
        from mace_forces import _jax_at

        _jax_at(args.ref)
    peak, bandwidth = roofs(args.repeats)
    print(f"roofs: float64 GEMM {peak / 1e9:.1f} GFLOP/s, stream {bandwidth / 1e9:.1f} GB/s "
          f"(ridge {peak / bandwidth:.1f} FLOP/B)")
    ff = MACEJax.from_torch(args.model)
    batch = batch_from_atoms(workload(args.case))
    inputs = ff.padded_inputs(batch)
    host = timed(lambda: ff.padded_inputs(batch), (), args.repeats)
    call = timed(lambda: ff.evaluate_padded(inputs), (), args.repeats)
    whole = timed(lambda: ff(batch), (), args.repeats)
    flops_all, bytes_all = cost(lambda p: ff._evaluate(p, **inputs), (ff.params,))
    print(f"{args.case}: {len(batch.numbers)} atoms, neighbour matrix {inputs['neighbors'].shape}; host inputs "
          f"{1e3 * host:.0f} ms, compiled call {1e3 * call:.0f} ms ({flops_all / 1e9:.2f} GFLOP, "
          f"{bytes_all / 1e9:.2f} GB), whole force-field call {1e3 * whole:.0f} ms")
    rows = []
    print(f"{'stage':34s} {'pass':8s} {'GFLOP':>7s} {'GB':>7s} {'FLOP/B':>6s} {'ms':>8s} {'GFLOP/s':>8s} {'GB/s':>6s} {'bound ms':>8s}")
    for name, fn, stage_args, argnums in stage_functions(ff, inputs):
        def fwd(*a, fn=fn):
            return fn(*a)

        def fwd_bwd(a, cotangent, fn=fn, argnums=argnums):
            closed = lambda *d: fn(*[d[argnums.index(i)] if i in argnums else x for i, x in enumerate(a)])
            _, vjp = jax.vjp(closed, *[a[i] for i in argnums])
            return vjp(cotangent)

        out = jax.jit(fn)(*stage_args)
        leaves, tree = jax.tree_util.tree_flatten(out)
        rng = np.random.default_rng(0)
        cotangent = tree.unflatten([jnp.asarray(rng.normal(size=x.shape), x.dtype) for x in leaves])
        for label, f, f_args in (("forward", fwd, stage_args), ("fwd+bwd", fwd_bwd, (stage_args, cotangent))):
            flops, nbytes = cost(f, f_args)
            seconds = timed(jax.jit(f), f_args, args.repeats)
            bound = max(flops / peak, nbytes / bandwidth)
            rows.append(dict(stage=name, passes=label, flops=flops, bytes=nbytes, seconds=seconds, bound_s=bound))
            print(f"{name:34s} {label:8s} {flops / 1e9:7.3f} {nbytes / 1e9:7.3f} {flops / max(nbytes, 1):6.2f} "
                  f"{1e3 * seconds:8.1f} {flops / seconds / 1e9:8.2f} {nbytes / seconds / 1e9:6.2f} {1e3 * bound:8.1f}", flush=True)
    total = sum(r["seconds"] for r in rows if r["passes"] == "fwd+bwd")
    print(f"sum of stages fwd+bwd {1e3 * total:.0f} ms vs compiled call {1e3 * call:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_flops=peak, bandwidth=bandwidth, host_s=host, call_s=call, whole_s=whole, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
