"""Build a small mace-torch model (random weights) for a set of elements and save it as a .model file.

    python scripts/make_small_mace.py OUT.model [--elements O,Mg,Co,...] [--from-embedded-heo] [--seed 0]

The model has the shape of the relaxation benchmarks' small MACE (ScaleShiftMACE, 2 residual
interactions, 16x0e hidden, max_ell 2, correlation 3, r_max 4 Å) with random weights and per-element
reference energies; it gives smooth, finite energies and forces for any structure of those elements,
which is what CLI and pipeline tests need. It is not a trained potential.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import numpy as np


def build_small_mace(atomic_numbers, seed: int = 0, r_max: float = 4.0):
    """A float64 ScaleShiftMACE with random weights for these atomic numbers."""
    import torch
    from e3nn import o3
    from mace import modules

    atomic_numbers = sorted(int(z) for z in set(atomic_numbers))
    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block, interaction_cls_first=block,
        num_interactions=2, num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps("16x0e"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=-np.linspace(1.0, 3.0, len(atomic_numbers)), avg_num_neighbors=8.0, atomic_numbers=atomic_numbers,
        correlation=3, gate=torch.nn.functional.silu, atomic_inter_scale=0.1, atomic_inter_shift=0.0,
    ).double()


def main(argv=None) -> int:
    import torch
    from ase.data import atomic_numbers as numbers_of

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--elements", default="O,Mg,Co,Ni,Cu,Zn")
    parser.add_argument("--from-embedded-heo", action="store_true", help="every element of jaxmat's embedded HEO frames")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.from_embedded_heo:
        from jaxmat.data.sources import load_structures

        zs = {int(z) for r in load_structures("embedded:heo").records for z in r.numbers}
    else:
        zs = {numbers_of[e.strip()] for e in args.elements.split(",")}
    model = build_small_mace(zs, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out)
    print(f"saved a small random-weight MACE for {len(zs)} elements to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
