"""Write docs/heo_results.md from a finished HEO pipeline run (scripts/heo_pipeline.sh RUN_DIR).

    python scripts/make_heo_results.py runs/heo [--out docs]

The tables are the run's own report.md (recomputed from its saved outputs by jaxmat.heo.report); the
finetuning numbers are read from mace_run_train's results files; plots are copied to OUT/heo/.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

from jaxmat.heo.finetune import training_curves
from jaxmat.heo.report import write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder with curated/, finetune/, report/ (scripts/heo_pipeline.sh)")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.out)
    figures = out / "heo"
    figures.mkdir(parents=True, exist_ok=True)
    report_md = write_report(run / "report").read_text()
    curation = json.loads((run / "curated" / "summary.json").read_text())
    finetune = json.loads((run / "finetune" / "summary.json").read_text())
    lines = ["# HEO pipeline — results of the CPU default run", "",
             f"Machine: {platform.processor() or platform.machine()}, 2 cores; commands: `bash scripts/heo_pipeline.sh {run}` "
             "(configs/heo_finetune.yaml, configs/heo_eval.yaml).", ""]
    timings = run / "timings.txt"
    if timings.exists():
        lines += [f"Wall time ({timings.read_text().strip()}).", ""]
    lines += ["## Curation", "", f"{curation['rows_kept']} of {curation['rows_scanned']} frames kept; splits {curation['splits']}.", ""]
    lines += ["## Finetuning", "", f"Frames: {finetune['frames']}; foundation: `{Path(finetune['foundation']).name}`.", "",
              "| stage | epochs | final validation energy RMSE (meV/atom) | final validation force RMSE (meV/Å) |", "|---|---|---|---|"]
    for stage, folder in (("base (CHGNet labels)", "base"), ("finetune (DFT labels)", "finetune")):
        curves = training_curves(run / "finetune" / folder / "mace")
        if curves["valid_epoch"]:
            lines.append(f"| {stage} | {len(curves['epoch'])} | {curves['valid_rmse_e_per_atom_meV'][-1]:.1f} | "
                         f"{curves['valid_rmse_f_meV_per_A'][-1]:.1f} |")
    lines.append("")
    for name in ("loss_base.png", "loss_finetune.png"):
        if (run / "finetune" / name).exists():
            shutil.copyfile(run / "finetune" / name, figures / name)
            lines.append(f"![{name}](heo/{name})")
    lines.append("")
    body = report_md.split("\n", 1)[1]  # drop the report's own title
    for name in ("parity.png", "steps_histogram.png", "energy_traces.png"):
        if (run / "report" / name).exists():
            shutil.copyfile(run / "report" / name, figures / name)
            body = body.replace(f"]({name})", f"](heo/{name})")
    lines += ["## Evaluation", body.replace("\n## ", "\n### ")]
    (out / "heo_results.md").write_text("\n".join(lines))
    print(f"wrote {out / 'heo_results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
