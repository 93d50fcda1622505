"""Roofline of one JAX MACE force call: FLOPs, bytes and measured time per stage, forward and backward.

    python benchmarks/mace_roofline.py [--model PATH.model] [--case W1] [--repeats 5] [--ref GIT_REF] [--json out.json]

Each stage of ``model.node_energies`` (and the edge vectors before it) is compiled on its own with the
inputs it gets in the real call (the W1 batch by default: 16 x 64-atom HEO cells with the shared small
MACE, float64), and timed forward alone and forward + backward (a VJP w.r.t. the inputs that depend on the
positions - what a force call differentiates - with a cotangent of ones, an argument, so its values do not
change the work; a stage that depends on none, the first layer's gather, has no backward in the real call).
Every array a stage reads - parameters and neighbour indices included - is an argument of its compiled
program, not a constant folded into it. Compilation is timed apart and excluded from the timings, which are
medians after a warm-up call, each call synchronised with ``block_until_ready`` (so they hold on a GPU too). FLOPs and bytes come from XLA's
cost analysis of the compiled stage (bytes = operands and results of every HLO op, an upper bound on DRAM
traffic; XLA counts a loop body once). The machine's roofs are measured in the same process: a float64
GEMM (2048^3) and a streaming a*x + y over 64 MiB arrays. Also: host time (neighbour list, padding) and
the whole compiled call. :func:`profile_stages` and :func:`profile_call` are also the ``profile`` unit
of the GPU benchmark (benchmarks/gpu/units.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Callable

import mace  # noqa: F401  (before e3nn)
import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.forcefields.base import batch_from_atoms  # noqa: E402
from jaxmat.forcefields.mace import blocks as mace_blocks, model as mace_model, ops, product_basis  # noqa: E402
from jaxmat.forcefields.mace.forcefield import MACEJax  # noqa: E402
from jaxmat.precision import float64_scope  # noqa: E402
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


def costs(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of a compiled program by XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    analysis = (analysis[0] if analysis else {}) if isinstance(analysis, list) else (analysis or {})
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def cost(fn, args):
    return costs(jax.jit(fn).lower(*args).compile())


def roofs(repeats):
    """Measured float64 GEMM rate (FLOP/s) and streaming bandwidth (B/s) of this machine."""
    with float64_scope():
        a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)))
        gemm = timed(jax.jit(lambda a: a @ a), (a,), repeats)
        x = jnp.ones(8 * 2**20)
        y = jnp.ones(8 * 2**20)
        stream = timed(jax.jit(lambda x, y: 1.5 * x + y), (x, y), repeats)
    return 2 * 2048**3 / gemm, 3 * 8 * 8 * 2**20 / stream


@contextlib.contextmanager
def model_precision(ff: MACEJax):
    """The force field's own dtype and matmul precision, as ``MACEJax.evaluate_padded`` traces under."""
    with jax.default_matmul_precision(ff.matmul_precision), float64_scope(ff.float64):
        yield


@dataclass
class Stage:
    """One stage of the call: fn(*args) with the arrays it gets in the real call; argnums: the arguments
    that depend on the positions (differentiated in a force call; empty: no backward in the real call)."""

    name: str
    fn: Callable
    args: tuple
    argnums: tuple


def iter_stages(ff: MACEJax, inputs: dict):
    """Generator of every stage of one call, in order, for ``ff.padded_inputs(batch)``. The caller sends
    back each stage's output (``stages.send(stage.fn(*stage.args))``, computed as it likes, e.g. by the
    stage's compiled forward); the next stages take their inputs from it. Follows
    ``model.energy_forces_stress`` / ``node_energies`` step for step (at zero strain), for the MP-0 shape
    (plain and residual interaction blocks, no distance transform, no ZBL); other shapes are refused."""
    if not mace_model.radial_weights_depend_on_length_only(ff.config) or ff.config.get("zbl") or any(
            ic.get("normalization", "avg") != "avg" for ic in ff.config["interactions"]):
        raise ValueError("the stage profile follows the MP-0 shape (plain and residual blocks); this model is another family")
    config, params = ff.config, ff.params
    species, neighbors, mask = inputs["species"], inputs["neighbors"], inputs["neighbor_mask"]
    outgoing = inputs["outgoing_slots"]
    n, k = neighbors.shape
    r_max = config["r_max"]
    dtype = getattr(ff, "compute_dtype", inputs["positions"].dtype)  # the model's dtype (float32 in "mixed" precision)

    def edge_vectors(positions, shifts, neighbors, outgoing, mask):
        vectors = (positions[:, None, :] - ops.gather_neighbors(positions, neighbors, outgoing) + shifts).astype(dtype)
        far = jnp.asarray([2.0 * r_max, 0.0, 0.0], vectors.dtype)
        return jnp.where(mask[..., None], vectors, far).reshape(-1, 3)

    vectors = yield Stage("edge vectors (position gather)", edge_vectors,
                          (inputs["positions"], inputs["shifts"], neighbors, outgoing, mask), (0, 1))

    def harmonics(vectors):
        sh = mace_model.spherical_harmonics(vectors, config["sh_lmax"])
        return jnp.linalg.norm(vectors, axis=-1), [y.reshape(n, k, -1) for y in sh]

    lengths, edge_sh = yield Stage("lengths + spherical harmonics", harmonics, (vectors,), (0,))

    def radial(lengths, params, mask):
        return [w.reshape(n, k, -1) for w in mace_model._radial_weights(params, config, lengths, mask.reshape(-1))]

    tp_weights = yield Stage("radial basis + MLPs (all layers)", radial, (lengths, params, mask), (0,))

    (w_embed,) = params["node_embedding"]
    with model_precision(ff):
        node_feats = [config["node_embedding"]["path_weight"] * jnp.take(w_embed, species, axis=0)[:, None, :]]
    features = []
    for layer, (ic, pc) in enumerate(zip(config["interactions"], config["products"])):
        ip, pp = params["interactions"][layer], params["products"][layer]
        moving = layer > 0  # the first layer's node features (the embedding) do not depend on the positions

        def up_gather(node_feats, ip, neighbors, outgoing, ic=ic):
            up = mace_blocks.linear(node_feats, ic["linear_up"], ip["linear_up"])
            return [ops.gather_neighbors(b, neighbors, outgoing) for b in up]

        gathered = yield Stage(f"L{layer} linear_up + neighbour gather", up_gather, (node_feats, ip, neighbors, outgoing),
                               (0,) if moving else ())

        def conv(gathered, edge_sh, tp_w, ic=ic):
            return ops.convolution(gathered, edge_sh, tp_w, ic["tp_paths"], config["cg"])

        messages = yield Stage(f"L{layer} edge TP + neighbour sum", conv, (gathered, edge_sh, tp_weights[layer]),
                               (0, 1, 2) if moving else (1, 2))

        def message_linear(messages, ip, species, ic=ic):
            out = [m / ic["avg_num_neighbors"] for m in mace_blocks.linear(messages, ic["linear"], ip["linear"])]
            if not ic["residual"]:
                out = mace_blocks.species_linear(out, species, ic["skip"], ip["skip"])
            return jnp.concatenate(out, axis=1)

        coupled = yield Stage(f"L{layer} message linear (+ skip)", message_linear, (messages, ip, species), (0,))
        product_species = jnp.zeros_like(species) if pc["agnostic"] else species

        def product(coupled, pp, product_species, pc=pc):
            return product_basis.symmetric_contraction(coupled, product_species, pc["contractions"], pp["weights"],
                                             getattr(ff, "contraction_block", 1))

        blocks = yield Stage(f"L{layer} symmetric contraction", product, (coupled, pp, product_species), (0,))

        def product_linear(blocks, node_feats, ip, pp, species, ic=ic, pc=pc):
            out = mace_blocks.linear(blocks, pc["linear"], pp["linear"])
            if pc["use_sc"] and ic["residual"]:
                sc = mace_blocks.species_linear(node_feats, species, ic["skip"], ip["skip"])
                out = [a + b for a, b in zip(out, sc)]
            return out

        node_feats = yield Stage(f"L{layer} product linear (+ residual)", product_linear,
                                 (blocks, node_feats, ip, pp, species), (0, 1) if moving else (0,))
        features.append(node_feats)

    def readouts(features, params):
        return mace_model._readouts(params, config, features, n, ff.head_index, dtype)

    yield Stage("readouts", readouts, (features, params), (0,))


def forward_backward(fn, argnums):
    """(args, cotangent) -> (fn's output, its VJP w.r.t. args[argnums]): the output is returned too, as the real
    call needs it, so XLA cannot drop a forward that the backward does not read (a linear's)."""

    def fwd_bwd(args, cotangent):
        closed = lambda *d: fn(*[d[argnums.index(i)] if i in argnums else x for i, x in enumerate(args)])
        out, vjp = jax.vjp(closed, *[args[i] for i in argnums])
        return out, vjp(cotangent)

    return fwd_bwd


def compile_and_time(fn, args, repeats):
    """(compile seconds, call seconds list, FLOPs, bytes, output) of jit(fn) on args: compiled once (timed
    apart), one warm-up call, then ``repeats`` calls, each synchronised with ``block_until_ready``."""
    started = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - started
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - started)
    return compile_s, times, *costs(compiled), out


def profile_stages(ff: MACEJax, inputs: dict, repeats: int = 3, max_stages: int | None = None, deadline: float | None = None,
                   log=None) -> dict:
    """{"rows", "stopped", "traced_only"}: one row per stage measured - compile seconds (excluded from the
    timings), forward and forward+backward call seconds (``repeats`` each), XLA FLOPs and bytes of both.
    With ``max_stages``, the first max_stages are measured and the rest only traced (``jax.eval_shape`` of
    forward and forward+backward: a stage that no longer traces fails, nothing is compiled); their names in
    "traced_only". With a ``deadline`` (time.time()), stops before a stage that might not finish by then
    (twice the longest stage so far, plus 5 s); "stopped" then says which, else None."""
    rows, traced, stopped, longest = [], [], None, 0.0
    stages = iter_stages(ff, inputs)
    out = None
    with model_precision(ff):
        while True:
            try:
                stage = stages.send(out)
            except StopIteration:
                break
            if max_stages is not None and len(rows) >= max_stages:
                out = jax.eval_shape(stage.fn, *stage.args)
                if stage.argnums:
                    jax.eval_shape(forward_backward(stage.fn, stage.argnums), stage.args, out)
                traced.append(stage.name)
                continue
            if deadline is not None and time.time() + 2 * longest + 5 > deadline:
                stopped = f"stopped before '{stage.name}' ({len(rows)} stages measured): the unit's time limit is near"
                break
            started = time.perf_counter()
            compile_fwd, fwd_s, fwd_flops, fwd_bytes, out = compile_and_time(stage.fn, stage.args, repeats)
            row = dict(stage=stage.name, differentiated=bool(stage.argnums), compile_fwd_s=compile_fwd, fwd_s=fwd_s,
                       fwd_flops=fwd_flops, fwd_bytes=fwd_bytes)
            if stage.argnums:
                # the cotangent is an argument of the compiled program: its values do not change the work, so
                # ones (random normals cost an eager compilation per shape, 0.5 s each on CPU)
                cotangent = jax.tree_util.tree_map(jnp.ones_like, out)
                compile_bwd, bwd_s, bwd_flops, bwd_bytes, _ = compile_and_time(
                    forward_backward(stage.fn, stage.argnums), (stage.args, cotangent), repeats)
                del cotangent
            else:  # nothing here depends on the positions: the real call runs the forward only
                compile_bwd, bwd_s, bwd_flops, bwd_bytes = 0.0, fwd_s, fwd_flops, fwd_bytes
            row.update(compile_fwd_bwd_s=compile_bwd, fwd_bwd_s=bwd_s, fwd_bwd_flops=bwd_flops, fwd_bwd_bytes=bwd_bytes)
            rows.append(row)
            longest = max(longest, time.perf_counter() - started)
            if log:
                log(row)
    stages.close()
    return dict(rows=rows, stopped=stopped, traced_only=traced)


def profile_call(ff: MACEJax, inputs: dict, repeats: int = 3) -> dict:
    """The whole compiled call (energies, forces, stress) on the same inputs, as ``ff.evaluate_padded`` runs it:
    compile seconds, call seconds (``repeats``), XLA FLOPs and bytes."""
    n_systems = inputs["n_systems"]
    arrays = {name: value for name, value in inputs.items() if name != "n_systems"}
    with model_precision(ff):
        compile_s, times, flops, nbytes, _ = compile_and_time(
            lambda params, arrays: ff._evaluate(params, **arrays, n_systems=n_systems), (ff.params, arrays), repeats)
    return dict(compile_s=compile_s, call_s=times, flops=flops, bytes=nbytes)


def _relative_error(low, reference) -> float:
    """max |low - reference| / max |reference| over every leaf (0 where the reference is all zero)."""
    worst = 0.0
    for a, b in zip(jax.tree_util.tree_leaves(low), jax.tree_util.tree_leaves(reference)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(b), initial=0.0))
        if scale > 0:
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def stage_errors(reference: MACEJax, low: MACEJax, reference_inputs: dict, low_inputs: dict,
                 max_stages: int | None = None) -> list[dict]:
    """Where a lower precision loses accuracy: every stage of ``low`` (e.g. float32) run on the *reference*
    stage's inputs cast to its dtype, against the reference (float64) stage - so each row is that stage's own
    error, not what earlier stages passed on. Per stage: the relative error of the forward output and of the
    VJP with a cotangent of ones (w.r.t. what depends on the positions; what a force call differentiates).
    With ``max_stages``, only the first max_stages stages (the smoke run's shortcut)."""
    low_dtype = getattr(low, "compute_dtype", low.dtype)
    cast = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jnp.asarray(a, low_dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)
    reference_stages, low_stages = iter_stages(reference, reference_inputs), iter_stages(low, low_inputs)
    rows, out = [], None
    while max_stages is None or len(rows) < max_stages:
        try:
            with model_precision(reference):
                stage = reference_stages.send(out)
            with model_precision(low):
                low_stage = low_stages.send(None if out is None else cast(out))
        except StopIteration:
            break
        with model_precision(reference):
            out = jax.jit(stage.fn)(*stage.args)
            reference_grads = (jax.jit(forward_backward(stage.fn, stage.argnums))(stage.args, jax.tree_util.tree_map(jnp.ones_like, out))[1]
                               if stage.argnums else None)
        with model_precision(low):
            low_out = jax.jit(low_stage.fn)(*low_stage.args)
            low_grads = (jax.jit(forward_backward(low_stage.fn, low_stage.argnums))(
                low_stage.args, jax.tree_util.tree_map(jnp.ones_like, low_out))[1] if low_stage.argnums else None)
        rows.append({"stage": stage.name, "forward": _relative_error(low_out, out),
                     "backward": None if reference_grads is None else _relative_error(low_grads, reference_grads)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/work/shared/models/mace_heo_chgnet_small.model")
    parser.add_argument("--case", default="W1")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
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
    ff = MACEJax.from_torch(args.model, dtype=args.dtype)
    batch = batch_from_atoms(workload(args.case))
    inputs = ff.padded_inputs(batch)
    host = timed(lambda: ff.padded_inputs(batch), (), args.repeats)
    call = profile_call(ff, inputs, args.repeats)
    whole = timed(lambda: ff(batch), (), args.repeats)
    call_s = float(np.median(call["call_s"]))
    print(f"{args.case}: {len(batch.numbers)} atoms, neighbour matrix {inputs['neighbors'].shape}; host inputs "
          f"{1e3 * host:.0f} ms, compiled call {1e3 * call_s:.0f} ms ({call['flops'] / 1e9:.2f} GFLOP, "
          f"{call['bytes'] / 1e9:.2f} GB; compiled in {call['compile_s']:.1f} s), whole force-field call {1e3 * whole:.0f} ms")
    print(f"{'stage':38s} {'pass':8s} {'GFLOP':>7s} {'GB':>7s} {'FLOP/B':>6s} {'ms':>8s} {'GFLOP/s':>8s} {'GB/s':>6s} "
          f"{'bound ms':>8s} {'compile s':>9s}")
    rows = []

    def show(row):
        for label, key in (("forward", "fwd"), ("fwd+bwd", "fwd_bwd")):
            flops, nbytes, seconds = row[f"{key}_flops"], row[f"{key}_bytes"], float(np.median(row[f"{key}_s"]))
            bound = max(flops / peak, nbytes / bandwidth)
            rows.append(dict(stage=row["stage"], passes=label, flops=flops, bytes=nbytes, seconds=seconds, bound_s=bound,
                             compile_s=row[f"compile_{key}_s"]))
            print(f"{row['stage']:38s} {label:8s} {flops / 1e9:7.3f} {nbytes / 1e9:7.3f} {flops / max(nbytes, 1):6.2f} "
                  f"{1e3 * seconds:8.1f} {flops / seconds / 1e9:8.2f} {nbytes / seconds / 1e9:6.2f} {1e3 * bound:8.1f} "
                  f"{row[f'compile_{key}_s']:9.2f}", flush=True)

    profile_stages(ff, inputs, args.repeats, log=show)  # rows collected by show
    total = sum(r["seconds"] for r in rows if r["passes"] == "fwd+bwd")
    print(f"sum of stages fwd+bwd {1e3 * total:.0f} ms vs compiled call {1e3 * call_s:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_flops=peak, bandwidth=bandwidth, host_s=host, call_s=call_s, whole_s=whole, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
