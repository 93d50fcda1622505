"""mace-torch layers -> (config, params) pieces of the JAX MACE, one function per layer kind.

Each reads a torch module's own weights and buffers (in float64) and says which variant it is; anything
the JAX side does not implement raises :class:`UnsupportedMACEError` naming the option.
"""

from __future__ import annotations

import numpy as np

from jaxmat.forcefields.mace import product_basis

INTERACTIONS = {  # mace-torch class -> the choices of jaxmat.forcefields.mace.blocks.interaction
    "RealAgnosticInteractionBlock": dict(residual=False, normalization="avg", radial_input="edge"),
    "RealAgnosticResidualInteractionBlock": dict(residual=True, normalization="avg", radial_input="edge"),
    "RealAgnosticDensityInteractionBlock": dict(residual=False, normalization="density", radial_input="edge"),
    "RealAgnosticDensityResidualInteractionBlock": dict(residual=True, normalization="density", radial_input="edge"),
    "RealAgnosticAttResidualInteractionBlock": dict(residual=True, normalization="avg", radial_input="att"),
    "RealAgnosticResidualNonLinearInteractionBlock": dict(residual=True, normalization="nonlinear", radial_input="embedding"),
}


class UnsupportedMACEError(ValueError):
    """The mace-torch model uses an option the JAX MACE does not implement."""


def refuse(option: str, detail: str = ""):
    raise UnsupportedMACEError(f"unsupported MACE option {option}{': ' + detail if detail else ''}; "
                               f"use the torch backend (--backend torch) for this model")


def array(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


def linear(module) -> tuple[dict, list]:
    """e3nn o3.Linear -> ({irreps_in, irreps_out, paths[, biases]}, weights): weights a list of (mul_in, mul_out)
    arrays, or {"weights": that list, "biases": the flat bias vector} for a linear map with biases."""
    name = type(module).__name__
    if name != "Linear" or not hasattr(module, "instructions"):
        refuse("cuequivariance/openequivariance layers", f"found {name}; convert the model back to e3nn first")
    flat = array(module.weight)
    weights, offset, paths = [], 0, []
    for ins in module.instructions:
        if ins.i_in == -1:  # a bias: its numbers are module.bias
            continue
        size = int(np.prod(ins.path_shape))
        weights.append(flat[offset:offset + size].reshape(ins.path_shape))
        offset += size
        paths.append([int(ins.i_in), int(ins.i_out), float(ins.path_weight)])
    cfg = {"irreps_in": str(module.irreps_in), "irreps_out": str(module.irreps_out), "paths": paths}
    if getattr(module, "bias_numel", 0):
        return {**cfg, "biases": True}, {"weights": weights, "biases": array(module.bias)}
    return cfg, weights


def species_tp(module) -> tuple[dict, list]:
    """e3nn FullyConnectedTensorProduct(features, one-hot species) -> a species-dependent linear map."""
    if type(module).__name__ != "FullyConnectedTensorProduct":
        refuse("skip connection", type(module).__name__)
    if module.irreps_in2.lmax != 0 or len(module.irreps_in2) != 1:
        refuse("skip connection with non-scalar node attributes", str(module.irreps_in2))
    flat = array(module.weight)
    weights, offset, paths = [], 0, []
    for ins in module.instructions:
        if ins.connection_mode != "uvw":
            refuse("skip tensor product mode", ins.connection_mode)
        size = int(np.prod(ins.path_shape))
        weights.append(flat[offset:offset + size].reshape(ins.path_shape))
        offset += size
        ir_out = module.irreps_out[ins.i_out].ir
        # e3nn's (l x 0e -> l) path divides by sqrt(2l+1), the value of the 3j symbol (l, 0, l)
        paths.append([int(ins.i_in1), int(ins.i_out), float(ins.path_weight) / float(np.sqrt(ir_out.dim))])
    return {"irreps_in": str(module.irreps_in1), "irreps_out": str(module.irreps_out), "paths": paths}, weights


def e3nn_mlp(module) -> tuple[float, list]:
    layers = list(module)
    weights, scales = [], set()
    for i, layer in enumerate(layers):
        if abs(layer.var_in - 1) > 0 or abs(layer.var_out - 1) > 0:
            refuse("radial MLP with variance_in/out != 1")
        weights.append(array(layer.weight))
        if i < len(layers) - 1:
            act = layer.act
            if getattr(act, "f", None) is not silu():
                refuse("radial MLP activation", repr(act))
            scales.add(1.0 if act._is_id else float(act.cst))
    return (scales.pop() if scales else 1.0), weights


def silu():
    import torch

    return torch.nn.functional.silu


def product(module) -> tuple[dict, dict]:
    contraction_module = module.symmetric_contractions
    if type(contraction_module).__name__ != "SymmetricContraction":
        refuse("symmetric contraction backend", type(contraction_module).__name__)
    contractions, weights = [], []
    for ir_out, contraction in zip(contraction_module.irreps_out, contraction_module.contractions):
        correlation = int(contraction.correlation)
        terms, order_weights = [], []
        for nu in range(1, correlation + 1):
            U = array(contraction.U_tensors(nu))
            terms.append(product_basis.contraction_terms(U, nu, ir_out.ir.l))
            w = contraction.weights_max if nu == correlation else contraction.weights[correlation - 1 - nu]
            order_weights.append(array(w))
        contractions.append(terms)
        weights.append(order_weights)
    linear_cfg, linear_w = linear(module.linear)
    cfg = {"irreps_in": str(contraction_module.irreps_in), "irreps_out": str(contraction_module.irreps_out),
           "contractions": contractions, "linear": linear_cfg, "use_sc": bool(module.use_sc),
           "agnostic": bool(getattr(module, "use_agnostic_product", False))}
    return cfg, {"weights": weights, "linear": linear_w}




def layernorm_mlp(module) -> list:
    """mace-torch RadialMLP (Linear with bias, LayerNorm, SiLU, ..., Linear) -> [{weight, bias[, ln_weight, ln_bias]}]."""
    import torch

    layers = []
    for part in module.net:
        if isinstance(part, torch.nn.Linear):
            layers.append({"weight": array(part.weight), "bias": array(part.bias)})
        elif isinstance(part, torch.nn.LayerNorm):
            if abs(part.eps - 1e-5) > 0 or not part.elementwise_affine:
                refuse("radial MLP layer norm", repr(part))
            layers[-1].update(ln_weight=array(part.weight), ln_bias=array(part.bias))
        elif not isinstance(part, torch.nn.SiLU):
            refuse("radial MLP layer", type(part).__name__)
    return layers


def _species_linear_rows(module) -> tuple[float, np.ndarray]:
    """An e3nn Linear of the one-hot species (Nx0e -> Cx0e): (path weight, weights (N, C))."""
    cfg, weights = linear(module)
    if len(cfg["paths"]) != 1 or isinstance(weights, dict):
        refuse("species embedding layout", cfg["irreps_in"])
    return cfg["paths"][0][2], weights[0]


def _convolution_paths(tp, cg: dict) -> list:
    from e3nn import o3

    if type(tp).__name__ != "TensorProduct":
        refuse("convolution tensor product backend", type(tp).__name__)
    paths, offset = [], 0
    for expected_out, ins in enumerate(tp.instructions):
        if ins.connection_mode != "uvu" or not ins.has_weight:
            refuse("convolution tensor product mode", ins.connection_mode)
        if ins.i_out != expected_out or tp.irreps_in2[ins.i_in2].mul != 1:
            refuse("convolution tensor product layout", str(tp))
        l1, l2 = tp.irreps_in1[ins.i_in1].ir.l, tp.irreps_in2[ins.i_in2].ir.l
        l3 = tp.irreps_out[ins.i_out].ir.l
        cg.setdefault(f"{l1}_{l2}_{l3}", o3.wigner_3j(l1, l2, l3).double().numpy())
        paths.append([int(ins.i_in1), int(ins.i_in2), int(l3), float(ins.path_weight), offset])
        offset += int(np.prod(ins.path_shape))
    if len(paths) != len(tp.irreps_out):
        refuse("convolution tensor product layout", str(tp))
    return paths


def gate(module, irreps: str) -> dict:
    """mace-torch's GatedEquivariantBlock (SiLU scalars, sigmoid gates) on blocks of ``irreps`` (the sorted,
    simplified irreps its input linear map produces): where scalars and gates sit in the first (0e) block and
    which block each gated part is, with the gate offset of its channels."""
    import torch

    from jaxmat.forcefields.mace.ops import parse_irreps

    if module._act_scalar is not torch.nn.functional.silu or module._act_gate is not torch.nn.functional.sigmoid:
        refuse("gated non-linearity", repr(module))
    if getattr(module, "_layout_is_ir_mul", False):
        refuse("gated non-linearity layout ir_mul")
    starts, offset = [], 0
    parsed = parse_irreps(irreps)
    for mul, l, _ in parsed:
        starts.append(offset)
        offset += mul * (2 * l + 1)
    first_mul, first_l, first_p = parsed[0]
    if first_l != 0 or first_p != 1 or max(module._s_start + module._s_len, module._g_start + module._g_len) > first_mul:
        refuse("gated non-linearity layout", irreps)
    gated = []
    for start, length, _, mul, gate_offset in module._gated_info:
        if start not in starts or parsed[starts.index(start)][0] != mul:
            refuse("gated non-linearity layout", irreps)
        gated.append([starts.index(start), int(gate_offset)])
    return {"scalars": [int(module._s_start), int(module._s_len)], "gates": [int(module._g_start), int(module._g_len)],
            "gated": gated, "scalar_cst": float(module._scalar_cst), "gate_cst": float(module._gate_cst)}


def interaction(module, cg: dict) -> tuple[dict, dict]:
    """Any interaction block of :data:`INTERACTIONS` -> (config, params) for blocks.interaction."""
    name = type(module).__name__
    if name not in INTERACTIONS:
        refuse("interaction block", f"{name} (supported: {', '.join(INTERACTIONS)})")
    if hasattr(module, "conv_fusion"):
        refuse("fused convolution (cuequivariance/openequivariance)")
    kind = INTERACTIONS[name]
    cfg = {**kind, "avg_num_neighbors": float(module.avg_num_neighbors), "tp_irreps_out": str(module.conv_tp.irreps_out),
           "tp_paths": _convolution_paths(module.conv_tp, cg), "target_irreps": str(module.target_irreps)}
    params = {}
    cfg["linear_up"], params["linear_up"] = linear(module.linear_up)
    if kind["normalization"] == "nonlinear":
        cfg["radial_mlp"] = "layernorm"
        params["radial"], params["density"] = layernorm_mlp(module.conv_tp_weights), layernorm_mlp(module.density_fn)
        for part in ("linear_res", "linear_1", "linear_2"):
            cfg[part], params[part] = linear(getattr(module, part))
        cfg["gate"] = gate(module.equivariant_nonlin, cfg["linear_1"]["irreps_out"])
        params["alpha"], params["beta"] = array(module.alpha), array(module.beta)
    else:
        cfg["radial_activation_scale"], params["radial"] = e3nn_mlp(module.conv_tp_weights)
        cfg["linear"], params["linear"] = linear(module.linear)
        if kind["normalization"] == "density":
            _, params["density"] = e3nn_mlp(module.density_fn)
    if kind["radial_input"] == "att":
        cfg["linear_down"], params["linear_down"] = linear(module.linear_down)
    if kind["radial_input"] == "embedding":
        cfg["source_embedding"], params["source_embedding"] = _species_linear_rows(module.source_embedding)
        cfg["target_embedding"], params["target_embedding"] = _species_linear_rows(module.target_embedding)
    skip = getattr(module, "skip_tp", None) or getattr(module, "skip_linear")
    if type(skip).__name__ == "FullyConnectedTensorProduct":
        cfg["skip_kind"] = "species"
        cfg["skip"], params["skip"] = species_tp(skip)
    else:
        cfg["skip_kind"] = "linear"
        cfg["skip"], params["skip"] = linear(skip)
    return cfg, params


def readout(module) -> tuple[dict, dict]:
    """Linear, non-linear (SiLU) and non-linear-with-biases readouts -> (config, params)."""
    name = type(module).__name__
    if name == "LinearReadoutBlock":
        cfg, w = linear(module.linear)
        return {"kind": "linear", "linear": cfg}, {"linear": w}
    if name not in ("NonLinearReadoutBlock", "NonLinearBiasReadoutBlock"):
        refuse("readout block", name)
    acts = module.non_linearity.acts
    if len(acts) != 1 or getattr(acts[0], "f", None) is not silu():
        refuse("readout gate", repr(acts))
    cfg = {"kind": "nonlinear" if name == "NonLinearReadoutBlock" else "nonlinear_bias",
           "activation_scale": 1.0 if acts[0]._is_id else float(acts[0].cst), "num_heads": int(getattr(module, "num_heads", 1))}
    params = {}
    for part in ("linear_1", "linear_mid", "linear_2"):
        if hasattr(module, part):
            cfg[part], params[part] = linear(getattr(module, part))
    return cfg, params


EMBEDDED_FEATURES = ("total_charge", "total_spin")  # per-structure features jaxmat carries (SystemBatch.charge / .spin)


def joint_embedding(model) -> tuple[dict, dict]:
    """mace-torch's GenericJointEmbedding of per-structure features (total charge, spin) and its optional energy
    readout -> (config, params)."""
    import torch

    module = model.joint_embedding
    specs, params = [], {"embedders": [], "project": None}
    for name, spec in module.specs.items():
        if name not in EMBEDDED_FEATURES or spec.get("per", "graph") != "graph":
            refuse("embedding_specs feature", f"{name} ({spec.get('per')}); jaxmat carries {', '.join(EMBEDDED_FEATURES)} per structure")
        embedder = module.embedders[name]
        if spec["type"] == "categorical":
            specs.append({"name": name, "type": "categorical", "offset": float(spec.get("offset", 0))})
            params["embedders"].append({"table": array(embedder.weight)})
        elif spec["type"] == "continuous" and int(spec["in_dim"]) == 1:
            first, _, second = embedder
            specs.append({"name": name, "type": "continuous"})
            bias = lambda layer: np.zeros(layer.weight.shape[0]) if layer.bias is None else array(layer.bias)
            params["embedders"].append({"w1": array(first.weight), "b1": bias(first), "w2": array(second.weight),
                                        "b2": bias(second)})
        else:
            refuse("embedding_specs feature type", f"{name}: {spec['type']}")
    project, activation = module.project
    if project.bias is not None or not isinstance(activation, torch.nn.SiLU):
        refuse("joint embedding projection", repr(module.project))
    params["project"] = array(project.weight)
    cfg = {"specs": specs}
    if hasattr(model, "embedding_readout"):
        cfg["readout"], params["readout"] = linear(model.embedding_readout.linear)
    return cfg, params
