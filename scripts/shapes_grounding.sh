#!/usr/bin/env bash
# Grounding on shapes, the measured route (docs/shapes.md, "2026-11-27 (g)" and "2026-11-28 (i)"): the
# CPU-sized model with its vision tower pretrained, then three stages of `rsagent train ground` in the
# episode's own words with the pretrained vision blocks kept (configs/ground_shapes_cpu.yaml):
#   ground-1    every single-target attribute query ("the small red circle"), 1-8 shapes (~40 min)
#   ground-2    the same on 2-8 shapes throughout, half the learning rate (~26 min)
#   ground-mix  the dataset's own `train` queries of every kind (reasoning, groups, absent) (~42 min)
# About 110 minutes of one thread beside another job. OUT/ground-mix is the grounded model the recipe's SFT
# starts from (`--policy qwen --model OUT/ground-mix` answers in one turn); each stage's result.json holds
# picked-right and box IoU on 600 held-out `test` queries beside the random-shape and colour-only baselines.
#
#   bash scripts/shapes_grounding.sh [OUT=runs/shapes-grounding] [extra rsagent train ground flags...]
#
# A finished stage is skipped and an interrupted one resumed (--resume) when the script runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/shapes-grounding}
shift $(( $# < 1 ? $# : 1 ))
RS=${RS:-.venv/bin/rsagent}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
source scripts/shapes_lib.sh

if [ ! -f "$OUT/base/model.safetensors" ]; then
    say "base model -> $OUT/base"
    rm -rf "$OUT/base"
    $RS shapes model --out "$OUT/base" --vision-steps 600 --rescale-visual
fi
# the first two measured stages were cut by wall-clock caps at steps 1555 and 735 of their schedules;
# --stop-after replays them step for step on a machine of any speed (the config holds the first stage's)
train "$OUT/ground-1" 0 ground --config configs/ground_shapes_cpu.yaml --model "$OUT/base" "$@"
train "$OUT/ground-2" 0 ground --config configs/ground_shapes_cpu.yaml --model "$OUT/ground-1" \
    --steps 2800 --stop-after 735 --lr 1e-3 --curriculum 0,0 "$@"
train "$OUT/ground-mix" 0 ground --config configs/ground_shapes_cpu.yaml --model "$OUT/ground-2" \
    --queries mix --steps 1400 --stop-after 1400 --lr 1e-3 --curriculum 0,0 "$@"
for stage in ground-1 ground-2 ground-mix; do
    .venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1]))['after']; print(sys.argv[2], json.dumps({k: r[k] for k in ('n', 'picked', 'iou', 'random_shape', 'named_colour', 'by_named')}))" \
        "$OUT/$stage/result.json" "$stage"
done
