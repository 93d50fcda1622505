"""Train PolySRL: ``python -m jaxmat.train --config configs/polysrl.yaml --workdir DIR [--set key=value ...]``.

Writes DIR/config.yaml, DIR/metrics.jsonl (one line per epoch), DIR/training.png and an orbax
checkpoint per epoch (params, optimiser state, step, data-order and noise RNG keys). Rerunning the
same command resumes after the last saved epoch and reproduces the losses of an uninterrupted run.

Every device (all processes' after ``--distributed``) trains data-parallel with the one-device losses;
``--distributed`` takes --coordinator HOST:PORT --num-processes N --process-id I, or reads the cluster
environment (SLURM ...). WORKDIR must then be on a file system every process sees.
"""

from __future__ import annotations

import sys

from jaxmat import cli


@cli.command
def main(argv=None) -> int:
    parser = cli.parser("python -m jaxmat.train", __doc__)
    parser.add_argument("--config", required=True, help="YAML config (see configs/polysrl.yaml)")
    parser.add_argument("--workdir", required=True, help="output/resume directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from jaxmat import distributed

    distributed.add_arguments(parser)
    args = parser.parse_args(argv)
    cli.configure_logging()
    distributed.initialize_from_args(args)  # before any array: every process's devices join the mesh
    from jaxmat.config import apply_overrides, load_config
    from jaxmat.polysrl.config import resolve_config
    from jaxmat.polysrl.trainer import run_training
    from jaxmat.precision import use_float64

    config = resolve_config(apply_overrides(load_config(args.config), args.overrides))
    use_float64(config["model"]["dtype"] == "float64")
    distributed.check_same("config", {"config": config, "workdir": str(args.workdir)}, args.distributed_timeout)
    history = run_training(config, args.workdir, progress=not args.no_progress)
    if history:
        print(f"trained {history[-1]['epoch']} epochs; final loss {history[-1]['loss']:.6g}; outputs in {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
