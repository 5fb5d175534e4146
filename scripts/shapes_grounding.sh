#!/usr/bin/env bash
# Grounding on shapes, the measured route (docs/shapes.md, "2026-11-27 (g)"): the CPU-sized model with its
# vision tower pretrained, then two stages of `rsagent train ground` in the episode's own words with the
# pretrained vision blocks kept (configs/ground_shapes_cpu.yaml). About 70 minutes of one thread beside
# another job (measured: 40 + 26); OUT/ground-2 is the grounded model (`--policy qwen --model OUT/ground-2`,
# or SFT's --model) and OUT/ground-2/result.json holds picked-right and box IoU on 600 held-out `test`
# queries beside the random-shape and colour-only baselines (measured: picked 0.480, box IoU 0.275).
#
#   bash scripts/shapes_grounding.sh [OUT=runs/shapes-grounding] [extra rsagent train ground flags...]
#
# A finished stage is skipped and an interrupted one resumed (--resume) when the script runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/shapes-grounding}
shift $(( $# < 1 ? $# : 1 ))
RS=.venv/bin/rsagent
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EVAL_N=${EVAL_N:-500}
mkdir -p "$OUT"
source scripts/shapes_lib.sh

if [ ! -f "$OUT/base/model.safetensors" ]; then
    say "base model -> $OUT/base"
    rm -rf "$OUT/base"
    $RS shapes model --out "$OUT/base" --vision-steps 600 --rescale-visual
fi
# the measured stages were cut by wall-clock caps at steps 1555 and 735 of their schedules; --stop-after
# replays them step for step on a machine of any speed (the config holds the first stage's)
train "$OUT/ground-1" 0 ground --config configs/ground_shapes_cpu.yaml --model "$OUT/base" "$@"
train "$OUT/ground-2" 0 ground --config configs/ground_shapes_cpu.yaml --model "$OUT/ground-1" \
    --steps 2800 --stop-after 735 --lr 1e-3 --curriculum 0,0 "$@"
.venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1]))['after']; print(json.dumps({k: r[k] for k in ('n', 'picked', 'iou', 'random_shape', 'colour_only')}, indent=1))" "$OUT/ground-2/result.json"
