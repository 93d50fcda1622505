"""PolySRL train-step throughput: jaxmat (jit) vs a PyTorch + torch-geometric expression of the reference.

The PyTorch side is written here from the published description of the reference step (see
../shared/docs/polysrl_spec.md): GCNConv x3 with residuals and jumping knowledge, Set2Set heads,
a GraphNetwork structure encoder with concatenated [x_src, x_dst, e] edge inputs, the sampled soft
contrastive loss with broadcast pair distances, clip_grad_norm_ and Adam. Both contenders run in
this one process on the same batch, same threads and same environment; the PyTorch model is loaded
with the jaxmat parameters and its loss is checked against ours before timing.

    python benchmarks/polysrl_train_step.py [--batch-size 256] [--repeats 5] [--threads 2]

For the fairest CPU numbers run it with the tuned glibc allocator of shared/docs/stack.md, which
helps PyTorch most:  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def build_batches(batch_size: int, seed: int, limit: int | None = None):
    """The same rows as a jaxmat batch (equivalent periodic edges merged, the default) and with every edge
    kept (the reference graph, for PyTorch). limit: use only the first structures of the embedded data."""
    from jaxmat.polysrl.dataset import build_dataset

    batches = []
    for merge in (True, False):
        config = {"source": "embedded", "path": None, "limit": limit, "cutoff": 8.0, "max_neighbors": 12, "merge_equivalent_edges": merge}
        dataset = build_dataset(config)
        chunk = np.random.default_rng(seed).permutation(len(dataset))[:batch_size]
        batches.append(dataset.batch(chunk, batch_size, np.float32, dataset.padding([chunk])))
    return chunk, batches[0], batches[1]


def time_jax(batch, repeats: int, seed: int):
    import jax

    from jaxmat.polysrl.model import ModelConfig, init_params, loss_with_noise
    from jaxmat.polysrl.training import TrainState, make_optimizer, make_train_step

    config = ModelConfig()
    params = init_params(config, batch, jax.random.PRNGKey(seed))
    optimizer = make_optimizer()
    state = TrainState(params, optimizer.init(params), np.zeros((), np.int64))
    step = jax.jit(make_train_step(config, optimizer))
    eps = np.asarray(jax.random.normal(jax.random.PRNGKey(seed + 1), (batch.graph_mask.shape[0], config.n_samples, config.hidden)))
    loss = float(jax.jit(loss_with_noise, static_argnums=1)(params, config, batch, eps)[0])
    started = time.perf_counter()
    out = step(state, batch, jax.random.PRNGKey(0))
    jax.block_until_ready(out)
    compile_seconds = time.perf_counter() - started
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return params, eps, loss, compile_seconds, times


# --- the PyTorch expression of the reference step --------------------------------------------------


def torch_model(hidden=200):
    import torch
    from torch import nn
    from torch_geometric.nn import GCNConv, Set2Set
    from torch_geometric.utils import scatter

    def mlp(n_in, n_hidden, n_out, layer_norm):
        layers = [nn.Linear(n_in, n_hidden)] + ([nn.LayerNorm(n_hidden)] if layer_norm else []) + [nn.PReLU(), nn.Linear(n_hidden, n_out)]
        return nn.Sequential(*layers)

    class Stoichiometry(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([GCNConv(hidden, hidden) for _ in range(3)])
            self.jk = nn.Linear(4 * hidden, hidden)
            self.mean_s2s, self.var_s2s = Set2Set(hidden, processing_steps=2), Set2Set(hidden, processing_steps=2)
            self.mean_lin, self.var_lin = nn.Linear(2 * hidden, hidden), nn.Linear(2 * hidden, hidden)

        def forward(self, x, edge_index, counts, batch):
            hs = [x]
            for conv in self.convs:
                hs.append(torch.nn.functional.elu(conv(hs[-1], edge_index)) + hs[-1])
            h = self.jk(torch.cat(hs, 1)) * counts[:, None]
            pooled = scatter(h, batch, 0, reduce="sum")
            mu = torch.nn.functional.normalize(self.mean_lin(self.mean_s2s(h, batch)) + pooled, dim=1)
            logsigma = torch.clip(self.var_lin(self.var_s2s(h, batch)) + pooled, max=40)
            return mu, logsigma

    class Structure(nn.Module):
        def __init__(self):
            super().__init__()
            self.node_embedding = nn.Parameter(torch.randn(hidden))
            self.node_enc, self.edge_enc = mlp(hidden, hidden, hidden, False), mlp(41, hidden, hidden, False)
            self.edge_mlps = nn.ModuleList([mlp(3 * hidden, 2 * hidden, hidden, True) for _ in range(3)])
            self.node_mlps = nn.ModuleList([mlp(2 * hidden, 2 * hidden, hidden, True) for _ in range(3)])

        def forward(self, n_atoms, edge_index, edge_attr, batch):
            x = self.node_enc(self.node_embedding.expand(n_atoms, -1))
            e = self.edge_enc(edge_attr)
            row, col = edge_index
            for edge_mlp, node_mlp in zip(self.edge_mlps, self.node_mlps):
                e_new = edge_mlp(torch.cat([x[row], x[col], e], 1))
                x_new = node_mlp(torch.cat([x, scatter(e_new, col, 0, dim_size=n_atoms, reduce="sum")], 1))
                x, e = x + x_new, e + e_new
            return torch.nn.functional.normalize(scatter(x, batch, 0, reduce="sum"), dim=1)

    class Loss(nn.Module):
        def __init__(self):
            super().__init__()
            self.shift, self.negative_scale = nn.Parameter(20.0 * torch.ones(1)), nn.Parameter(20.0 * torch.ones(1))

        def forward(self, z, s, logsigma, same):
            n = z.shape[0]
            anchors = z.repeat_interleave(n, 0)  # (N^2, K, D), pairs (i, j) in row-major order
            selected = s.repeat(n, 1)[:, None, :]  # (N^2, 1, D)
            distance = torch.sqrt(((anchors - selected) ** 2).sum(-1) + 1e-6)
            logits = -self.negative_scale * distance + self.shift
            m = torch.where(same.reshape(-1), 1.0, -1.0)[:, None]
            nll = -(logits * m - torch.logaddexp(logits, -logits)).logsumexp(1) + np.log(z.shape[1])
            zbar = z.mean(1)
            kl = -0.5 * (1 + logsigma - zbar**2 - logsigma.exp()).sum()
            return nll.sum() + 1e-8 * kl

    return Stoichiometry(), Structure(), Loss()


def torch_inputs(batch, chunk):
    import torch

    from jaxmat.polysrl.encoders import gaussian_expansion

    n = len(chunk)
    sto, cry = batch.stoichiometry, batch.crystal
    n_sto, n_cry = int(sto.n_node[:n].sum()), int(cry.n_node[:n].sum())
    e_sto, e_cry = int(sto.n_edge[:n].sum()), int(cry.n_edge[:n].sum())
    ids = np.asarray(batch.formula_ids[:n])
    return {
        "sto_x": torch.tensor(np.asarray(sto.nodes["features"][:n_sto])),
        "sto_edge_index": torch.tensor(np.stack([sto.senders[:e_sto], sto.receivers[:e_sto]]).astype(np.int64)),
        "sto_counts": torch.tensor(np.asarray(sto.nodes["counts"][:n_sto])),
        "sto_batch": torch.tensor(np.repeat(np.arange(n), sto.n_node[:n])),
        "n_atoms": n_cry,
        "edge_index": torch.tensor(np.stack([cry.senders[:e_cry], cry.receivers[:e_cry]]).astype(np.int64)),
        "edge_attr": torch.tensor(np.asarray(gaussian_expansion(np.asarray(cry.edges["distance"][:e_cry])))),
        "batch": torch.tensor(np.repeat(np.arange(n), cry.n_node[:n])),
        "same": torch.tensor(ids[:, None] == ids[None, :]) | torch.eye(n, dtype=torch.bool),
    }


def load_jax_params(models, params):
    import torch

    from jaxmat.polysrl.reference import full_mapping, reference_from_tree

    flat = reference_from_tree(params, list(full_mapping()))
    sto, struct, loss = models
    rename = {}
    for l in range(3):
        rename[f"sto.gnn.convs.{l}.lin.weight"] = (sto, f"convs.{l}.lin.weight")
        rename[f"sto.gnn.convs.{l}.bias"] = (sto, f"convs.{l}.bias")
    rename["sto.gnn.lin.weight"], rename["sto.gnn.lin.bias"] = (sto, "jk.weight"), (sto, "jk.bias")
    for head, short in (("mean", "mean"), ("var", "var")):
        for w in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            rename[f"sto.{head}_set2set.lstm.{w}"] = (sto, f"{short}_s2s.lstm.{w}")
        rename[f"sto.{head}_lin.weight"], rename[f"sto.{head}_lin.bias"] = (sto, f"{short}_lin.weight"), (sto, f"{short}_lin.bias")
    for key in flat:
        if key.startswith("str."):
            k = key[4:].replace("graphnetwork.GN_encoder.node_encoder", "node_enc").replace("graphnetwork.GN_encoder.edge_encoder", "edge_enc")
            for l in range(3):
                k = k.replace(f"graphnetwork.stacked_processor.{l}.edge_model.edge_mlp", f"edge_mlps.{l}")
                k = k.replace(f"graphnetwork.stacked_processor.{l}.node_model.node_mlp_2", f"node_mlps.{l}")
            rename[key] = (struct, k)
    rename["loss.shift"], rename["loss.negative_scale"] = (loss, "shift"), (loss, "negative_scale")
    for key, (module, name) in rename.items():
        target = module.get_parameter(name)
        with torch.no_grad():
            target.copy_(torch.tensor(np.asarray(flat[key]).reshape(target.shape)))


def time_torch(inputs, params, eps, repeats: int, device: str = "cpu"):
    """Loss with the jaxmat parameters and noise, first-step and per-step seconds of the PyTorch step on device."""
    import torch

    models = torch_model()
    load_jax_params(models, params)
    models = tuple(m.to(device) for m in models)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    sto, struct, loss_module = models
    parameters = [p for m in (struct, loss_module, sto) for p in m.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=5e-5)
    eps_t = torch.tensor(eps[: inputs["same"].shape[0]], device=device)
    synchronize = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def forward(noise):
        mu, logsigma = sto(inputs["sto_x"], inputs["sto_edge_index"], inputs["sto_counts"], inputs["sto_batch"])
        s = struct(inputs["n_atoms"], inputs["edge_index"], inputs["edge_attr"], inputs["batch"])
        z = mu[:, None, :] + noise * logsigma.exp()[:, None, :]
        return loss_module(z, s, logsigma, inputs["same"])

    with torch.no_grad():
        loss_value = float(forward(eps_t))
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = forward(torch.normal(0.0, 1.0, eps_t.shape, device=device, dtype=eps_t.dtype))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 2.0)
        optimizer.step()
        synchronize()
        times.append(time.perf_counter() - started)
    return loss_value, times[0], times[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    chunk, batch, full_batch = build_batches(args.batch_size, args.seed)
    atoms = int(batch.crystal.n_node[: len(chunk)].sum())
    merged_edges = int(batch.crystal.n_edge[: len(chunk)].sum())
    malloc = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}
    print(f"batch: {len(chunk)} structures, {atoms} atoms, {12 * atoms} edges; CPU {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; threads {args.threads}; allocator env {malloc}")
    print(f"jaxmat computes {merged_edges} edges after merging equivalent periodic images ({merged_edges / (12 * atoms):.0%})")
    params, eps, jax_loss, jax_compile, jax_times = time_jax(batch, args.repeats, args.seed)
    jax_step = float(np.median(jax_times))
    result = {"batch_size": len(chunk), "atoms": atoms, "jax_step_s": jax_step, "jax_samples_per_s": len(chunk) / jax_step,
              "jax_compile_s": jax_compile, "jax_times": jax_times, "allocator_env": malloc}
    print(f"jaxmat  : {jax_step:.3f} s/step  {len(chunk) / jax_step:7.1f} samples/s  (compile {jax_compile:.1f} s)")
    if not args.skip_torch:
        import torch

        torch.set_num_threads(args.threads)
        torch_loss, torch_first, torch_times = time_torch(torch_inputs(full_batch, chunk), params, eps, args.repeats)
        torch_step = float(np.median(torch_times))
        agreement = abs(torch_loss - jax_loss) / abs(jax_loss)
        result.update({"torch_step_s": torch_step, "torch_samples_per_s": len(chunk) / torch_step, "torch_times": torch_times,
                       "loss_jax": jax_loss, "loss_torch": torch_loss, "loss_rel_diff": agreement, "speedup": torch_step / jax_step})
        print(f"pytorch : {torch_step:.3f} s/step  {len(chunk) / torch_step:7.1f} samples/s  (first step {torch_first:.1f} s)")
        print(f"same parameters and noise: loss jaxmat {jax_loss:.6g} vs pytorch {torch_loss:.6g} (relative difference {agreement:.1e})")
        print(f"summary: jaxmat {len(chunk) / jax_step:.1f} samples/s, pytorch {len(chunk) / torch_step:.1f} samples/s, "
              f"speed-up {torch_step / jax_step:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
