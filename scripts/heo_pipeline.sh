#!/usr/bin/env bash
# The four HEO commands in sequence on the embedded LeMat-Bulk frames (CPU defaults), timed.
# usage: bash scripts/heo_pipeline.sh [RUN_DIR]   (default runs/heo)
set -euo pipefail
RUN=${1:-runs/heo}
t0=$(date +%s)
python -m jaxmat.heo.curate --source embedded:heo --out "$RUN/curated"
t1=$(date +%s)
python -m jaxmat.heo.finetune --config configs/heo_finetune.yaml --set out="$RUN/finetune" --set data.dir="$RUN/curated"
t2=$(date +%s)
python -m jaxmat.heo.generate --n 2 --count 4 --rattles 2 --rattle 0.1 --out "$RUN/cells.extxyz"
t3=$(date +%s)
python -m jaxmat.heo.evaluate --config configs/heo_eval.yaml --models "$RUN/finetune/base.model" "$RUN/finetune/finetuned.model" \
    --data "$RUN/curated" --structures "$RUN/cells.extxyz" --out "$RUN/report"
t4=$(date +%s)
echo "seconds: curate $((t1-t0)), finetune $((t2-t1)), generate $((t3-t2)), evaluate $((t4-t3)), total $((t4-t0))" | tee "$RUN/timings.txt"
