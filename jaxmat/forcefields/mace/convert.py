"""Read a mace-torch model into a JAX config (architecture + constants) and params (weights).

Supported: ``MACE`` and ``ScaleShiftMACE`` of mace-torch 0.3.16 with any interaction block of
:data:`convert_layers.INTERACTIONS` (plain, residual, density, density-residual, attention-residual and
residual non-linear), Bessel / Gaussian / Chebyshev radial bases, the Agnesi and Soft distance transforms,
``apply_cutoff`` either way, the ZBL pair repulsion, ``edge_irreps`` (also on the first layer), e3nn
symmetric contractions of any correlation (element-agnostic or not, reduced Clebsch-Gordan or not), O(3) or
SO(3) spherical harmonics, linear, non-linear and non-linear-with-biases readouts (the last one only, or
all), several heads, the joint embedding of total charge and spin (``embedding_specs``, with its energy
readout). Anything else (other embedded features, cuequivariance layers, dipole and long-range models) is
refused with an error naming the option.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmat.forcefields.mace.convert_layers import (
    UnsupportedMACEError,
    array,
    interaction,
    joint_embedding,
    linear,
    product,
    readout,
    refuse,
)

CONVERTER_VERSION = 2
"""Bumped whenever the converted config or params change shape: cached conversions of older versions are redone."""

__all__ = ["CONVERTER_VERSION", "UnsupportedMACEError", "from_torch", "load_torch_model"]


def load_torch_model(path_or_module):
    """A mace-torch module from a .model file (torch.load), or a copy of an in-memory module (the caller's is left
    as it is), in float64 on CPU."""
    import copy

    import mace  # noqa: F401  -- before e3nn
    import torch

    if isinstance(path_or_module, (str, Path)):
        path = Path(path_or_module)
        if not path.exists():
            raise FileNotFoundError(f"MACE model file {path} not found")
        module = torch.load(path, map_location="cpu", weights_only=False)
    else:
        module = copy.deepcopy(path_or_module)
    return module.to(dtype=torch.float64, device="cpu").eval()


def _radial(model, config: dict) -> None:
    """The radial basis, distance transform and ZBL repulsion of the model into config (covalent radii per species)."""
    radial = model.radial_embedding
    basis = radial.bessel_fn
    kind = type(basis).__name__
    if kind == "BesselBasis":
        config["radial_basis"] = {"type": "bessel", "frequencies": array(basis.bessel_weights).tolist(),
                                  "prefactor": float(basis.prefactor)}
        config["bessel_frequencies"], config["bessel_prefactor"] = config["radial_basis"]["frequencies"], float(basis.prefactor)
    elif kind == "GaussianBasis":
        config["radial_basis"] = {"type": "gaussian", "centres": array(basis.gaussian_weights).tolist(),
                                  "coefficient": float(basis.coeff)}
    elif kind == "ChebychevBasis":
        config["radial_basis"] = {"type": "chebyshev", "num_basis": int(basis.num_basis)}
    else:
        refuse("radial_type", kind)
    radii_sources = []
    transform = getattr(radial, "distance_transform", None)
    if transform is not None:
        name = type(transform).__name__
        if name == "AgnesiTransform":
            config["distance_transform"] = {"kind": "agnesi", **{k: float(getattr(transform, k)) for k in ("a", "p", "q")}}
        elif name == "SoftTransform":
            config["distance_transform"] = {"kind": "soft", "alpha": float(transform.alpha)}
        else:
            refuse("distance_transform", name)
        radii_sources.append(transform.covalent_radii)
    if hasattr(model, "pair_repulsion"):
        zbl = model.pair_repulsion_fn
        config["zbl"] = {"c": array(zbl.c).tolist(), "a_exp": float(zbl.a_exp), "a_prefactor": float(zbl.a_prefactor),
                         "p": int(zbl.p)}
        radii_sources.append(zbl.covalent_radii)
    if radii_sources:
        radii = [array(r)[config["atomic_numbers"]] for r in radii_sources]
        if any(not np.array_equal(radii[0], r) for r in radii[1:]):
            refuse("covalent radii that differ between the distance transform and ZBL")
        config["covalent_radii"] = radii[0].tolist()


def from_torch(path_or_module) -> tuple[dict, dict]:
    """JAX (config, params) of a mace-torch model (a ``.model`` path or an in-memory module, left unchanged)."""
    model = load_torch_model(path_or_module)
    name = type(model).__name__
    if name not in ("MACE", "ScaleShiftMACE"):
        refuse("model class", f"{name} (supported: MACE, ScaleShiftMACE)")
    if getattr(model, "lammps_mliap", False):
        refuse("lammps_mliap")
    sh = model.spherical_harmonics
    if not sh.normalize or sh.normalization != "component":
        refuse("spherical harmonics normalisation")
    if any(ir.p not in ((-1) ** ir.l, 1) for _, ir in sh.irreps_out):
        refuse("spherical harmonics parity", str(sh.irreps_out))

    cg: dict = {}
    embed_cfg, embed_w = linear(model.node_embedding.linear)
    (path,) = embed_cfg["paths"]
    interactions = [interaction(m, cg) for m in model.interactions]
    products = [product(m) for m in model.products]
    readouts = [readout(m) for m in model.readouts]
    heads = list(getattr(model, "heads", None) or ["Default"])
    if hasattr(model, "scale_shift"):
        scale = np.atleast_1d(array(model.scale_shift.scale)).tolist()
        shift = np.atleast_1d(array(model.scale_shift.shift)).tolist()
    else:
        scale, shift = [1.0] * len(heads), [0.0] * len(heads)
    config = {
        "model_class": name,
        "converter_version": CONVERTER_VERSION,
        "r_max": float(model.r_max),
        "atomic_numbers": [int(z) for z in model.atomic_numbers],
        "atomic_energies": np.atleast_2d(array(model.atomic_energies_fn.atomic_energies)).tolist(),
        "heads": heads,
        "scale": scale,
        "shift": shift,
        "sh_lmax": int(sh.irreps_out.lmax),
        "num_polynomial_cutoff": int(model.radial_embedding.cutoff_fn.p),
        "apply_cutoff": bool(getattr(model.radial_embedding, "apply_cutoff", True)),
        "node_embedding": {"num_elements": embed_w[0].shape[0], "path_weight": path[2]},
        "interactions": [c for c, _ in interactions],
        "products": [c for c, _ in products],
        "readouts": [c for c, _ in readouts],
        "cg": cg,
    }
    _radial(model, config)
    if hasattr(model, "joint_embedding"):
        config["joint_embedding"], embedding_params = joint_embedding(model)
    params = {
        "node_embedding": embed_w,
        "interactions": [p for _, p in interactions],
        "products": [p for _, p in products],
        "readouts": [p for _, p in readouts],
    }
    if hasattr(model, "joint_embedding"):
        params["joint_embedding"] = embedding_params
    return config, params
