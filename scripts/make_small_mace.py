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

from jaxmat.testing import build_small_mace


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
