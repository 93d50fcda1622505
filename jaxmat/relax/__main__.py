"""Relax many structures at once.

    python -m jaxmat.relax INPUT.extxyz --model MODEL --out OUT.extxyz [--optimizer fire|lbfgs]
        [--fmax 0.05] [--max-steps 300] [--max-atoms N] [--relax-cell] [--trajectory DIR] [--backend torch|jax]

MODEL is a mace-torch model file (``--backend torch`` runs it with mace-torch, ``--backend jax`` with
jaxmat's JAX MACE after converting the weights), a directory written by scripts/convert_mace.py
(``--backend jax``, no torch needed), or a classical potential for quick tests:
``lj[:sigma,epsilon,cutoff]`` / ``morse[:sigma,epsilon,alpha,cutoff]`` (Å, eV).
Finished structures are appended to OUT.partial as they complete; a killed run started again
with the same command skips them. OUT holds every structure in input order, with
info['status'] (converged / max_steps / failed), info['n_steps'], energy (eV) and forces (eV/Å).
``--max-steps 0`` only evaluates energies and forces.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from jaxmat.errors import JaxmatInputError


def load_force_field(spec: str, backend: str = "torch", dtype: str = "float64"):
    """A force field from a model path or a 'lj:...' / 'morse:...' spec."""
    name, _, args = spec.partition(":")
    if name in ("lj", "morse"):
        import jax

        jax.config.update("jax_enable_x64", dtype == "float64")
        from jaxmat.forcefields import classical

        values = [float(v) for v in args.split(",")] if args else []
        return classical.lennard_jones(*values) if name == "lj" else classical.morse(*values)
    path = Path(spec)
    if not path.exists():
        raise JaxmatInputError(f"model {spec} not found (a mace-torch .model file, a converted JAX MACE directory, or lj:/morse:)")
    if backend == "jax":
        from jaxmat.forcefields.mace import UnsupportedMACEError
        from jaxmat.forcefields.mace.forcefield import MACEJax

        try:
            return MACEJax.load(path, dtype=dtype) if path.is_dir() else MACEJax.from_torch(path, dtype=dtype)
        except UnsupportedMACEError as error:
            raise JaxmatInputError(str(error)) from error
    if path.is_dir():
        raise JaxmatInputError(f"{spec} is a converted JAX MACE directory: use --backend jax")
    from jaxmat.forcefields.mace_torch import MACETorch

    return MACETorch(spec, dtype=dtype)


def _frame(result, index: int):
    atoms = result.atoms
    atoms.info.update({"status": result.status, "n_steps": int(result.n_steps), "input_index": int(index)})
    if result.message:
        atoms.info["message"] = result.message
    if result.status == "failed" and not np.isfinite(result.energy):
        atoms.calc = None
    return atoms


def main(argv=None) -> int:
    import ase.io

    parser = argparse.ArgumentParser(prog="python -m jaxmat.relax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="structures (any format ase.io.read knows, e.g. extxyz), or embedded:heo")
    parser.add_argument("--model", required=True, help="mace-torch model file, or lj[:sigma,eps,cutoff] / morse[:...]")
    parser.add_argument("--out", required=True, help="output extxyz")
    parser.add_argument("--optimizer", choices=["fire", "lbfgs"], default="fire")
    parser.add_argument("--fmax", type=float, default=0.05, help="force convergence threshold, eV/Å")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--max-atoms", type=int, default=None, help="atom budget of one batch")
    parser.add_argument("--relax-cell", action="store_true", help="relax the cell too (ASE FrechetCellFilter per structure)")
    parser.add_argument("--trajectory", help="folder for one extxyz trajectory per structure")
    parser.add_argument("--backend", choices=["torch", "jax"], default="torch", help="MACE implementation")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from jaxmat import compile_cache
    from jaxmat.files import append_frame, read_frame_log
    from jaxmat.relax.runner import relax

    compile_cache.enable()  # a rerun with the same shapes compiles nothing ($JAXMAT_COMPILATION_CACHE=0: off)

    try:
        if args.input == "embedded:heo":  # the LeMat-Bulk HEO frames shipped with jaxmat
            from jaxmat.data.sources import load_structures
            from jaxmat.data.structures import to_ase

            structures = [to_ase(r) for r in load_structures("embedded:heo").records]
        else:
            structures = ase.io.read(args.input, index=":")
        if not structures:
            raise JaxmatInputError(f"{args.input} holds no structures")
        force_field = load_force_field(args.model, args.backend, args.dtype)
        out = Path(args.out)
        partial = out.with_name(out.name + ".partial")
        done = {}
        if partial.exists():
            frames, dropped = read_frame_log(partial)
            if dropped:
                print(f"warning: dropped a truncated last frame ({dropped} bytes, an interrupted write) from {partial}; "
                      f"that structure is relaxed again", file=sys.stderr)
            for atoms in frames:
                done[int(atoms.info["input_index"])] = atoms
            print(f"resuming: {len(done)} of {len(structures)} structures already done in {partial}", file=sys.stderr)
        todo = [i for i in range(len(structures)) if i not in done]
        traj_dir = Path(args.trajectory) if args.trajectory else None
        if traj_dir:
            traj_dir.mkdir(parents=True, exist_ok=True)

        def on_result(result):
            index = todo[result.index]
            frame = _frame(result, index)
            append_frame(partial, frame)  # one write: a kill leaves whole frames, or a tail the rerun drops
            done[index] = frame
            if traj_dir and result.trajectory:
                from ase import Atoms
                from ase.calculators.singlepoint import SinglePointCalculator

                images = []
                for positions, energy, forces, cell in result.trajectory:
                    image = Atoms(numbers=frame.numbers, positions=positions, cell=cell, pbc=frame.pbc)
                    image.calc = SinglePointCalculator(image, energy=energy, forces=forces)
                    images.append(image)
                ase.io.write(traj_dir / f"{index:05d}.extxyz", images, format="extxyz")

        names = [f"structure {i} of {args.input}" for i in todo]
        relax([structures[i] for i in todo], force_field, args.optimizer, args.fmax, args.max_steps, args.max_atoms,
              progress=not args.no_progress, on_result=on_result, keep_trajectory=traj_dir is not None, names=names,
              relax_cell=args.relax_cell)
        tmp = out.with_name(out.name + ".tmp")
        ase.io.write(tmp, [done[i] for i in range(len(structures))], format="extxyz")
        tmp.replace(out)
        partial.unlink(missing_ok=True)
    except (JaxmatInputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    statuses = [done[i].info["status"] for i in range(len(structures))]
    counts = {s: statuses.count(s) for s in ("converged", "max_steps", "failed")}
    print(f"wrote {len(statuses)} structures to {out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
