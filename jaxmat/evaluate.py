"""Evaluate a stoichiometry encoder (or a baseline) on a composition property task with k-fold CV.

    python -m jaxmat.evaluate --workdir DIR --task expt_gap|expt_is_metal|FILE.csv
        [--protocol representation|transfer] [--folds 5] [--model pretrained|random-init|magpie-rf|roost]
        --out OUT [--epochs 300] [--task-type regression|classification]

Splits are Matbench's (KFold, shuffle, random_state 18012019). Writes OUT/results.json
({"mae": {"mean", "std", "folds"}, ...}), OUT/predictions.csv and a parity plot (regression) or ROC
curve (classification) as OUT/parity.png / OUT/roc.png.
"""

from __future__ import annotations

import sys

from jaxmat import cli


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.evaluate", __doc__)
    parser.add_argument("--workdir", help="training directory of the encoder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--protocol", choices=["representation", "transfer"], default="representation")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--model", choices=["pretrained", "random-init", "magpie-rf", "roost"], default="pretrained")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--task-type", choices=["regression", "classification"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cli.configure_logging()
    from jaxmat.polysrl.evaluation import evaluate

    results = evaluate(args.task, args.model, args.workdir, args.protocol, args.folds, args.out, args.epochs, args.task_type, args.seed)
    names = ("mae", "rmse", "r2") if results["task_type"] == "regression" else ("roc_auc", "accuracy", "f1")
    print(f"{results['task']} / {results['model']}: " + ", ".join(f"{n} {results[n]['mean']:.4f} ± {results[n]['std']:.4f}" for n in names)
          + f"  ({results['n_rows']} rows, {results['skipped_rows']} skipped; results in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
