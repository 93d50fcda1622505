"""Convert a mace-torch model file to a JAX MACE directory that loads without torch.

    python scripts/convert_mace.py MODEL.model OUT_DIR [--no-check]

MODEL may also be a mace-torch foundation key (medium-mpa-0, small-omat-0, ...), fetched by mace-torch.

OUT_DIR holds config.json (architecture and constants) and params/ (orbax). The converted model is
reloaded and compared with mace-torch on two small structures (float64); the script fails if the
energies differ by more than 1e-6 eV/atom or the forces by more than 1e-5 eV/Å.
Use it with ``python -m jaxmat.relax ... --model OUT_DIR --backend jax`` or
``jaxmat.forcefields.mace.forcefield.MACEJax.load(OUT_DIR)``.
"""

import argparse
import sys

from jaxmat.errors import JaxmatInputError
from jaxmat.forcefields.mace.check import convert_model_file
from jaxmat.forcefields.mace.convert import UnsupportedMACEError
from jaxmat.forcefields.mace_models import model_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="mace-torch .model file or foundation key")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with mace-torch")
    args = parser.parse_args(argv)
    try:
        differences = convert_model_file(model_file(args.model) or args.model, args.out, check=not args.no_check)
    except (UnsupportedMACEError, FileNotFoundError, JaxmatInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    if differences:
        print("JAX vs mace-torch (float64): " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))
        if differences["energy_per_atom"] > 1e-6 or differences["forces"] > 1e-5:
            print("error: the converted model does not reproduce mace-torch", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
