"""Name mapping between the PolySRL reference (PyTorch state_dict keys) and jaxmat parameter trees.

torch Linear weights are (out, in); Flax Dense kernels are (in, out). Old PyG (1.7) GCNConv stores
``convs.{l}.weight`` as (in, out); PyG 2.x stores ``convs.{l}.lin.weight`` as (out, in).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# (reference key relative to its module, path in our tree, transpose?)
Mapping = tuple[str, tuple[str, ...], bool]


def _linear(ref: str, path: tuple[str, ...]) -> list[Mapping]:
    return [(f"{ref}.weight", path + ("kernel",), True), (f"{ref}.bias", path + ("bias",), False)]


def stoichiometry_mapping(num_layers: int = 3, probabilistic: bool = True, old_gcn_layout: bool = False) -> list[Mapping]:
    rows: list[Mapping] = []
    for layer in range(num_layers):
        if old_gcn_layout:
            rows.append((f"gnn.convs.{layer}.weight", (f"conv_{layer}", "lin", "kernel"), False))
        else:
            rows.append((f"gnn.convs.{layer}.lin.weight", (f"conv_{layer}", "lin", "kernel"), True))
        rows.append((f"gnn.convs.{layer}.bias", (f"conv_{layer}", "bias"), False))
    rows += _linear("gnn.lin", ("jk_lin",))
    for head in ("mean", "var") if probabilistic else ("mean",):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            rows.append((f"{head}_set2set.lstm.{name}_l0", (f"{head}_set2set", "lstm", name), False))
        rows += _linear(f"{head}_lin", (f"{head}_lin",))
    return rows


def _mlp(ref: str, path: tuple[str, ...], layer_norm: bool) -> list[Mapping]:
    rows = _linear(f"{ref}.0", path + ("lin_in",))
    if layer_norm:
        rows += [(f"{ref}.1.weight", path + ("norm", "scale"), False), (f"{ref}.1.bias", path + ("norm", "bias"), False)]
    act = 2 if layer_norm else 1
    rows.append((f"{ref}.{act}.weight", path + ("act", "weight"), False))
    rows += _linear(f"{ref}.{act + 1}", path + ("lin_out",))
    return rows


def structure_mapping(num_layers: int = 3) -> list[Mapping]:
    rows: list[Mapping] = [("node_embedding", ("node_embedding",), False)]
    rows += _mlp("graphnetwork.GN_encoder.node_encoder", ("node_encoder",), False)
    rows += _mlp("graphnetwork.GN_encoder.edge_encoder", ("edge_encoder",), False)
    for layer in range(num_layers):
        base = f"graphnetwork.stacked_processor.{layer}"
        rows += _mlp(f"{base}.edge_model.edge_mlp", (f"edge_mlp_{layer}",), True)
        rows += _mlp(f"{base}.node_model.node_mlp_2", (f"node_mlp_{layer}",), True)
    return rows


def full_mapping(sto_layers: int = 3, str_layers: int = 3) -> Iterator[Mapping]:
    """Mapping of the whole model, reference keys prefixed 'sto.', 'str.', 'loss.' as in the parity fixture."""
    for key, path, transpose in stoichiometry_mapping(sto_layers):
        yield f"sto.{key}", ("stoichiometry",) + path, transpose
    for key, path, transpose in structure_mapping(str_layers):
        yield f"str.{key}", ("structure",) + path, transpose
    yield "loss.shift", ("shift",), False
    yield "loss.negative_scale", ("negative_scale",), False


def tree_from_reference(state: dict, mapping, dtype=np.float32) -> dict:
    """Nested parameter dict from reference arrays; raises KeyError naming a missing key."""
    tree: dict = {}
    for key, path, transpose in mapping:
        if key not in state:
            raise KeyError(f"reference state lacks {key!r}")
        value = np.asarray(state[key], dtype=dtype)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value.T if transpose else value
    return tree


def reference_from_tree(tree: dict, mapping) -> dict:
    """Inverse of tree_from_reference: flat dict of reference keys (torch layouts)."""
    out = {}
    for key, path, transpose in mapping:
        node = tree
        for part in path:
            node = node[part]
        value = np.asarray(node)
        out[key] = value.T if transpose else value
    return out
