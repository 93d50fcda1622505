"""Rock-salt high-entropy-oxide supercells.

Cations on the rock-salt cation sublattice of an n x n x n conventional MgO-type cell (8 atoms each,
a in Å): drawn i.i.d. from molar ratios (mode 'random', the reference's way), assigned exactly
equimolar in random order ('equimolar'), or arranged as a special quasirandom structure ('sqs', icet:
the cluster vector of pairs and triplets made as close as possible to the random alloy's at the same
counts); then every atom is rattled (Gaussian, stdev in Å) with a seed.

    python -m jaxmat.heo.generate --n 2 --count 4 --mode sqs --out cells.extxyz [--cations Mg,Co,Ni,Cu,Zn]
        [--ratios 1,1,1,1,1] [--rattle 0.1] [--rattles 1] [--seed 0] [--a 4.2]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers

from jaxmat import cli
from jaxmat.errors import JaxmatInputError

DEFAULT_CATIONS = ("Mg", "Co", "Ni", "Cu", "Zn")


def rocksalt_heo(
    n: int | Sequence[int] = 2,
    cations: Sequence[str] = DEFAULT_CATIONS,
    seed: int = 0,
    a: float = 4.2,
    rattle: float = 0.1,
    mode: str = "random",
    ratios: Sequence[float] | None = None,
    sqs_steps: int = 3000,
):
    """One supercell as ase.Atoms. mode: 'random' (i.i.d. from ``ratios``, default equal), 'equimolar'
    (counts differ by at most one, positions shuffled) or 'sqs' (counts from the ratios rounded to the
    site count, arranged by icet's SQS Monte Carlo with ``sqs_steps`` trial swaps)."""
    repeat = (n, n, n) if isinstance(n, int) else tuple(n)
    atoms = bulk("MgO", "rocksalt", a=a, cubic=True) * repeat
    rng = np.random.default_rng(seed)
    numbers = np.array([atomic_numbers[c] for c in cations])
    sites = np.flatnonzero(atoms.numbers != 8)
    if mode == "random":
        p = None if ratios is None else np.asarray(ratios, float) / np.sum(ratios)
        atoms.numbers[sites] = rng.choice(numbers, size=len(sites), p=p)
    elif mode == "equimolar":
        assignment = np.resize(numbers, len(sites))
        atoms.numbers[sites] = rng.permutation(assignment)
    elif mode == "sqs":
        atoms.numbers[:] = sqs_numbers(atoms, cations, equimolar_counts(len(sites), len(cations), ratios), a, seed,
                                       n_steps=sqs_steps)
    else:
        raise ValueError(f"unknown mode {mode!r}: use random, equimolar or sqs")
    if rattle:
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    atoms.info["generator"] = f"rocksalt_heo n={repeat} mode={mode} seed={seed} rattle={rattle}"
    return atoms


def equimolar_counts(n_sites: int, n_cations: int, ratios=None) -> list[int]:
    """Integer cation counts summing to n_sites, as close as possible to the ratios (default equal)."""
    ratios = np.ones(n_cations) if ratios is None else np.asarray(ratios, float)
    ideal = ratios / ratios.sum() * n_sites
    counts = np.floor(ideal).astype(int)
    for i in np.argsort(-(ideal - counts), kind="stable")[: n_sites - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def cluster_space(a: float, cations: Sequence[str], cutoffs=(6.0, 4.5)):
    """icet ClusterSpace of the rock-salt lattice: cations mix on one sublattice, O fixed on the other."""
    from icet import ClusterSpace

    primitive = bulk("MgO", "rocksalt", a=a)
    return ClusterSpace(primitive, cutoffs=list(cutoffs), chemical_symbols=[list(cations), ["O"]])


def sqs_numbers(supercell, cations: Sequence[str], counts, a: float, seed: int, n_steps: int = 3000):
    """Atomic numbers of an SQS on this rock-salt supercell with the given cation counts (icet)."""
    from icet.tools.structure_generation import generate_sqs_from_supercells

    space = cluster_space(a, cations)
    n_sites = int((supercell.numbers != 8).sum())
    concentrations = {c: n / n_sites for c, n in zip(cations, counts) if n}
    sublattice = space.get_sublattices(space.primitive_structure).active_sublattices[0].symbol
    template = supercell.copy()
    sqs = generate_sqs_from_supercells(space, supercells=[template], target_concentrations={sublattice: concentrations},
                                       n_steps=n_steps, random_seed=seed)
    if len(sqs) != len(supercell) or not np.allclose(sqs.positions, supercell.positions):
        raise RuntimeError("icet returned an SQS on a different cell ordering")  # pragma: no cover
    return sqs.numbers


@cli.command
def main(argv=None) -> int:
    from jaxmat.files import write_frames

    parser = cli.parser("python -m jaxmat.heo.generate", __doc__)
    parser.add_argument("--n", type=int, default=2, help="supercell size n (n x n x n conventional cells, 8n^3 atoms)")
    parser.add_argument("--count", type=int, default=1, help="structures to write (seeds seed..seed+count-1)")
    parser.add_argument("--mode", default="random", choices=["random", "equimolar", "sqs"])
    parser.add_argument("--cations", default=",".join(DEFAULT_CATIONS))
    parser.add_argument("--ratios", help="molar ratios, comma separated (default equal)")
    parser.add_argument("--rattle", type=float, default=0.1, help="Gaussian rattle stdev (Å)")
    parser.add_argument("--a", type=float, default=4.2, help="lattice parameter (Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rattles", type=int, default=1, help="re-rattled copies of each cation arrangement (the reference used 5)")
    parser.add_argument("--sqs-steps", type=int, default=3000)
    parser.add_argument("--out", required=True, help="extxyz file")
    args = parser.parse_args(argv)
    cations = [c.strip() for c in args.cations.split(",") if c.strip()]
    unknown = [c for c in cations if c not in atomic_numbers]
    if unknown:
        raise JaxmatInputError(f"unknown element(s) {unknown} in --cations")
    try:
        ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else None
    except ValueError:
        raise JaxmatInputError(f"--ratios {args.ratios!r}: numbers separated by commas") from None
    if ratios is not None and len(ratios) != len(cations):
        raise JaxmatInputError(f"{len(ratios)} ratios for {len(cations)} cations")
    structures = []
    for i in range(args.count):
        ideal = rocksalt_heo(args.n, cations, args.seed + i, args.a, 0.0, args.mode, ratios, args.sqs_steps)
        for k in range(args.rattles):  # the same cation arrangement, re-rattled
            atoms = ideal.copy()
            rng = np.random.default_rng([args.seed + i, k])
            atoms.positions += rng.normal(scale=args.rattle, size=atoms.positions.shape)
            atoms.info.update(arrangement=i, rattle_index=k, rattle=args.rattle,
                              generator=f"rocksalt_heo n={args.n} mode={args.mode} seed={args.seed + i} rattle={args.rattle} rattle_index={k}")
            structures.append(atoms)
    write_frames(args.out, structures)
    print(f"wrote {len(structures)} x {len(structures[0])}-atom {args.mode} cells ({args.count} arrangements x {args.rattles} rattles) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
