"""Read a mace-torch model into a JAX config (architecture + constants) and params (weights).

Supported: ``MACE`` and ``ScaleShiftMACE`` with RealAgnosticInteractionBlock /
RealAgnosticResidualInteractionBlock interactions, Bessel radial basis with polynomial cutoff
(``apply_cutoff`` either way), e3nn symmetric contractions of any correlation (also the
element-agnostic product), linear and SiLU non-linear readouts, several heads. Anything else is
refused with an error naming the option.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmat.forcefields.mace import product_basis

SUPPORTED_INTERACTIONS = ("RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock")


class UnsupportedMACEError(ValueError):
    """The mace-torch model uses an option the JAX MACE does not implement."""


def _refuse(option: str, detail: str = ""):
    raise UnsupportedMACEError(f"unsupported MACE option {option}{': ' + detail if detail else ''}; "
                               f"use the torch backend (--backend torch) for this model")


def _array(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


def _linear(module) -> tuple[dict, list]:
    """e3nn o3.Linear -> ({irreps_in, irreps_out, paths}, [weights (mul_in, mul_out)])."""
    name = type(module).__name__
    if name != "Linear" or not hasattr(module, "instructions"):
        _refuse("cuequivariance/openequivariance layers", f"found {name}; convert the model back to e3nn first")
    if getattr(module, "bias_numel", 0):
        _refuse("linear layers with biases")
    flat = _array(module.weight)
    weights, offset, paths = [], 0, []
    for ins in module.instructions:
        size = int(np.prod(ins.path_shape))
        weights.append(flat[offset:offset + size].reshape(ins.path_shape))
        offset += size
        paths.append([int(ins.i_in), int(ins.i_out), float(ins.path_weight)])
    return {"irreps_in": str(module.irreps_in), "irreps_out": str(module.irreps_out), "paths": paths}, weights


def _species_tp(module) -> tuple[dict, list]:
    """e3nn FullyConnectedTensorProduct(features, one-hot species) -> a species-dependent linear map."""
    if type(module).__name__ != "FullyConnectedTensorProduct":
        _refuse("skip connection", type(module).__name__)
    if module.irreps_in2.lmax != 0 or len(module.irreps_in2) != 1:
        _refuse("skip connection with non-scalar node attributes", str(module.irreps_in2))
    flat = _array(module.weight)
    weights, offset, paths = [], 0, []
    for ins in module.instructions:
        if ins.connection_mode != "uvw":
            _refuse("skip tensor product mode", ins.connection_mode)
        size = int(np.prod(ins.path_shape))
        weights.append(flat[offset:offset + size].reshape(ins.path_shape))
        offset += size
        ir_out = module.irreps_out[ins.i_out].ir
        # e3nn's (l x 0e -> l) path divides by sqrt(2l+1), the value of the 3j symbol (l, 0, l)
        paths.append([int(ins.i_in1), int(ins.i_out), float(ins.path_weight) / float(np.sqrt(ir_out.dim))])
    return {"irreps_in": str(module.irreps_in1), "irreps_out": str(module.irreps_out), "paths": paths}, weights


def _radial_mlp(module) -> tuple[float, list]:
    layers = list(module)
    weights, scales = [], set()
    for i, layer in enumerate(layers):
        if abs(layer.var_in - 1) > 0 or abs(layer.var_out - 1) > 0:
            _refuse("radial MLP with variance_in/out != 1")
        weights.append(_array(layer.weight))
        if i < len(layers) - 1:
            act = layer.act
            if getattr(act, "f", None) is not _silu():
                _refuse("radial MLP activation", repr(act))
            scales.add(1.0 if act._is_id else float(act.cst))
    return (scales.pop() if scales else 1.0), weights


def _silu():
    import torch

    return torch.nn.functional.silu


def _product(module) -> tuple[dict, dict]:
    contraction_module = module.symmetric_contractions
    if type(contraction_module).__name__ != "SymmetricContraction":
        _refuse("symmetric contraction backend", type(contraction_module).__name__)
    contractions, weights = [], []
    for ir_out, contraction in zip(contraction_module.irreps_out, contraction_module.contractions):
        correlation = int(contraction.correlation)
        terms, order_weights = [], []
        for nu in range(1, correlation + 1):
            U = _array(contraction.U_tensors(nu))
            terms.append(product_basis.contraction_terms(U, nu, ir_out.ir.l))
            w = contraction.weights_max if nu == correlation else contraction.weights[correlation - 1 - nu]
            order_weights.append(_array(w))
        contractions.append(terms)
        weights.append(order_weights)
    linear_cfg, linear_w = _linear(module.linear)
    cfg = {"irreps_in": str(contraction_module.irreps_in), "irreps_out": str(contraction_module.irreps_out),
           "contractions": contractions, "linear": linear_cfg, "use_sc": bool(module.use_sc),
           "agnostic": bool(getattr(module, "use_agnostic_product", False))}
    return cfg, {"weights": weights, "linear": linear_w}


def _interaction(module, cg: dict) -> tuple[dict, dict]:
    from e3nn import o3

    name = type(module).__name__
    if name not in SUPPORTED_INTERACTIONS:
        _refuse("interaction block", f"{name} (supported: {', '.join(SUPPORTED_INTERACTIONS)})")
    if hasattr(module, "conv_fusion"):
        _refuse("fused convolution (cuequivariance/openequivariance)")
    tp = module.conv_tp
    if type(tp).__name__ != "TensorProduct":
        _refuse("convolution tensor product backend", type(tp).__name__)
    paths, offset = [], 0
    for expected_out, ins in enumerate(tp.instructions):
        if ins.connection_mode != "uvu" or not ins.has_weight:
            _refuse("convolution tensor product mode", ins.connection_mode)
        if ins.i_out != expected_out or tp.irreps_in2[ins.i_in2].mul != 1:
            _refuse("convolution tensor product layout", str(tp))
        l1, l2 = tp.irreps_in1[ins.i_in1].ir.l, tp.irreps_in2[ins.i_in2].ir.l
        l3 = tp.irreps_out[ins.i_out].ir.l
        cg.setdefault(f"{l1}_{l2}_{l3}", o3.wigner_3j(l1, l2, l3).double().numpy())
        paths.append([int(ins.i_in1), int(ins.i_in2), int(l3), float(ins.path_weight), offset])
        offset += int(np.prod(ins.path_shape))
    if len(paths) != len(tp.irreps_out):
        _refuse("convolution tensor product layout", str(tp))
    activation_scale, radial = _radial_mlp(module.conv_tp_weights)
    up_cfg, up_w = _linear(module.linear_up)
    lin_cfg, lin_w = _linear(module.linear)
    skip_cfg, skip_w = _species_tp(module.skip_tp)
    cfg = {"residual": name == "RealAgnosticResidualInteractionBlock", "avg_num_neighbors": float(module.avg_num_neighbors),
           "linear_up": up_cfg, "tp_irreps_out": str(tp.irreps_out), "tp_paths": paths,
           "radial_activation_scale": activation_scale, "linear": lin_cfg, "skip": skip_cfg,
           "target_irreps": str(module.target_irreps)}
    return cfg, {"linear_up": up_w, "radial": radial, "linear": lin_w, "skip": skip_w}


def _readout(module) -> tuple[dict, dict]:
    name = type(module).__name__
    if name == "LinearReadoutBlock":
        cfg, w = _linear(module.linear)
        return {"kind": "linear", "linear": cfg}, {"linear": w}
    if name == "NonLinearReadoutBlock":
        acts = module.non_linearity.acts
        if len(acts) != 1 or getattr(acts[0], "f", None) is not _silu():
            _refuse("readout gate", repr(acts))
        cfg1, w1 = _linear(module.linear_1)
        cfg2, w2 = _linear(module.linear_2)
        scale = 1.0 if acts[0]._is_id else float(acts[0].cst)
        return ({"kind": "nonlinear", "linear_1": cfg1, "linear_2": cfg2, "activation_scale": scale,
                 "num_heads": int(getattr(module, "num_heads", 1))}, {"linear_1": w1, "linear_2": w2})
    _refuse("readout block", name)


def load_torch_model(path_or_module):
    """A mace-torch module from a .model file (torch.load) or the module itself, in float64 on CPU."""
    import mace  # noqa: F401  -- before e3nn
    import torch

    if isinstance(path_or_module, (str, Path)):
        path = Path(path_or_module)
        if not path.exists():
            raise FileNotFoundError(f"MACE model file {path} not found")
        module = torch.load(path, map_location="cpu", weights_only=False)
    else:
        module = path_or_module
    return module.to(dtype=torch.float64, device="cpu").eval()


def from_torch(path_or_module) -> tuple[dict, dict]:
    """JAX (config, params) of a mace-torch model (a ``.model`` path or an in-memory module)."""
    model = load_torch_model(path_or_module)
    name = type(model).__name__
    if name not in ("MACE", "ScaleShiftMACE"):
        _refuse("model class", f"{name} (supported: MACE, ScaleShiftMACE)")
    if hasattr(model, "pair_repulsion"):
        _refuse("pair_repulsion (ZBL)")
    if hasattr(model, "joint_embedding"):
        _refuse("embedding_specs (joint embedding of extra features)")
    if getattr(model, "lammps_mliap", False):
        _refuse("lammps_mliap")
    radial = model.radial_embedding
    if type(radial.bessel_fn).__name__ != "BesselBasis":
        _refuse("radial_type", type(radial.bessel_fn).__name__)
    if hasattr(radial, "distance_transform"):
        _refuse("distance_transform", type(radial.distance_transform).__name__)
    sh = model.spherical_harmonics
    if not sh.normalize or sh.normalization != "component":
        _refuse("spherical harmonics normalisation")
    if any(ir.p != (-1) ** ir.l for _, ir in sh.irreps_out):
        _refuse("use_so3")

    cg: dict = {}
    embed_cfg, embed_w = _linear(model.node_embedding.linear)
    (path,) = embed_cfg["paths"]
    interactions = [_interaction(m, cg) for m in model.interactions]
    products = [_product(m) for m in model.products]
    readouts = [_readout(m) for m in model.readouts]
    heads = list(getattr(model, "heads", None) or ["Default"])
    if hasattr(model, "scale_shift"):
        scale = np.atleast_1d(_array(model.scale_shift.scale)).tolist()
        shift = np.atleast_1d(_array(model.scale_shift.shift)).tolist()
    else:
        scale, shift = [1.0] * len(heads), [0.0] * len(heads)
    config = {
        "model_class": name,
        "r_max": float(model.r_max),
        "atomic_numbers": [int(z) for z in model.atomic_numbers],
        "atomic_energies": np.atleast_2d(_array(model.atomic_energies_fn.atomic_energies)).tolist(),
        "heads": heads,
        "scale": scale,
        "shift": shift,
        "sh_lmax": int(sh.irreps_out.lmax),
        "bessel_frequencies": _array(radial.bessel_fn.bessel_weights).tolist(),
        "bessel_prefactor": float(radial.bessel_fn.prefactor),
        "num_polynomial_cutoff": int(radial.cutoff_fn.p),
        "apply_cutoff": bool(getattr(radial, "apply_cutoff", True)),
        "node_embedding": {"num_elements": embed_w[0].shape[0], "path_weight": path[2]},
        "interactions": [c for c, _ in interactions],
        "products": [c for c, _ in products],
        "readouts": [c for c, _ in readouts],
        "cg": cg,
    }
    params = {
        "node_embedding": embed_w,
        "interactions": [p for _, p in interactions],
        "products": [p for _, p in products],
        "readouts": [p for _, p in readouts],
    }
    return config, params
