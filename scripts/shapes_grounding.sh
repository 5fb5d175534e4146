#!/usr/bin/env bash
# Single-turn grounding on shapes, the whole measured recipe (docs/shapes.md, "Grounding, 2026-11-27"):
# the CPU-sized model, then three training stages of bench/shapes_grounding.py, each continuing the last.
# About 95 minutes on an idle 2-core CPU (measured: 40 + 30 + 22); every stage writes OUT/stage-N/{log.jsonl,result.json,model}, and the
# last result.json holds picked-right and box IoU on 600 held-out `test` queries beside the random-shape
# and colour-only baselines. A stage already finished (its result.json exists) is skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/shapes-grounding}
PY=.venv/bin/python
mkdir -p "$OUT"
if [ ! -f "$OUT/base/shapes_model.json" ]; then
    rm -rf "$OUT/base"
    OMP_NUM_THREADS=2 .venv/bin/rsagent shapes model --out "$OUT/base" --vision-steps 600 --rescale-visual
fi
stage() {  # stage N MODEL ARGS...
    local n=$1 model=$2; shift 2
    [ -f "$OUT/stage-$n/result.json" ] && return 0
    OMP_NUM_THREADS=$THREADS $PY bench/shapes_grounding.py --model "$model" --out "$OUT/stage-$n" --eval 600 "$@"
}
# the measured stages were cut by wall-clock caps (40 and 30 minutes) at steps 3338 and 2241 of their
# schedules; --stop-after replays them step for step on a machine of any speed
THREADS=1 stage 1 "$OUT/base" --steps 5000 --stop-after 3338 --minutes 120
THREADS=1 stage 2 "$OUT/stage-1/model" --steps 2800 --stop-after 2241 --minutes 120 --lr 1e-3 --curriculum 0,0
THREADS=2 stage 3 "$OUT/stage-2/model" --steps 3000 --minutes 120 --lr 1e-3 --curriculum 0,0 --threads 2
$PY -c "import json,sys; r=json.load(open(sys.argv[1]))['after']; print(json.dumps({k: r[k] for k in ('n', 'picked', 'iou', 'random_shape', 'colour_only')}, indent=1))" "$OUT/stage-3/result.json"
