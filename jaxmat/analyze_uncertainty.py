"""Does the learned spread grow with the number of polymorphs? (PolySRL's central claim.)

    python -m jaxmat.analyze_uncertainty --workdir DIR [--out DIR/uncertainty] [--bootstrap 1000]

For every formula of the run's training structures: the number of distinct polymorphs (structures
that pymatgen's StructureMatcher does not match) and the encoder's mean sigma. Writes
OUT/polymorph_sigma.csv, OUT/summary.json (Spearman rho with a bootstrap 95 % interval) and
OUT/sigma_by_polymorphs.png (box plot of mean sigma per polymorph count).
"""

from __future__ import annotations

import sys

from jaxmat import cli


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.analyze_uncertainty", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    from jaxmat.polysrl.uncertainty import analyze

    summary = analyze(args.workdir, args.out, args.bootstrap)
    print(f"{summary['n_formulas']} formulas ({summary['formulas_with_several_polymorphs']} with several polymorphs): "
          f"Spearman rho {summary['spearman_rho']:.3f}, 95% CI [{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
