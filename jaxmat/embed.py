"""Embed formulas with a trained encoder.

``python -m jaxmat.embed --workdir DIR FORMULA... [--out file.csv]``: prints (or writes) one row per
formula with mu_0..mu_{D-1} and sigma_0..sigma_{D-1} and the mean sigma.
``--reference-checkpoint PATH`` embeds with a PolySRL reference PyTorch state dict instead.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from jaxmat import cli
from jaxmat.files import write_atomically


def write_embeddings(path, formulas, mu, sigma) -> Path:
    """CSV with formula, mean_sigma, mu_0..mu_{D-1}, sigma_0..sigma_{D-1}, written whole or not at all."""
    dim = mu.shape[1]

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["formula", "mean_sigma"] + [f"mu_{i}" for i in range(dim)] + [f"sigma_{i}" for i in range(dim)])
            for formula, m, s in zip(formulas, mu, sigma):
                writer.writerow([formula, f"{s.mean():.8g}"] + [f"{v:.10g}" for v in m] + [f"{v:.10g}" for v in s])

    return write_atomically(path, write)


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.embed", __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training directory (config.yaml + checkpoints)")
    source.add_argument("--reference-checkpoint", help="PolySRL reference stoichiometry-encoder .pt state dict")
    parser.add_argument("formulas", nargs="+", metavar="FORMULA")
    parser.add_argument("--out", help="CSV file to write (default: print a summary to stdout)")
    args = parser.parse_args(argv)
    from jaxmat.polysrl.api import import_reference_checkpoint, load_encoder

    embedder = load_encoder(args.workdir) if args.workdir else import_reference_checkpoint(args.reference_checkpoint)
    mu, sigma = embedder.embed(args.formulas)
    if args.out:
        print(f"wrote {len(args.formulas)} embeddings to {write_embeddings(args.out, args.formulas, mu, sigma)}")
    else:
        for formula, m, s in zip(args.formulas, mu, sigma):
            head = " ".join(f"{v:+.4f}" for v in m[:4])
            print(f"{formula:<20} mu[:4] = {head} ...  mean sigma = {np.mean(s):.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
