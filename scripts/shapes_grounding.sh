#!/usr/bin/env bash
# Grounding on shapes, the measured route (docs/shapes.md, "2026-11-27 (g)", "2026-11-28 (i)" and "(n)"): the
# CPU-sized model with its vision tower pretrained (5,000 steps of perception), then three stages of
# `rsagent train ground` in the episode's own words with the whole pretrained tower kept
# (configs/ground_shapes_cpu.yaml):
#   base        random weights, then 5,000 steps of perception pretraining (VISION_STEPS; 24 min beside synthesis)
#   ground-1    every single-target attribute query ("the small red circle"), 1-8 shapes (24 min)
#   ground-2    the same on 2-8 shapes throughout, half the learning rate (7 min)
#   ground-mix  the dataset's own `train` queries of every kind (reasoning, groups, absent) (16 min)
# Minutes on 2 threads (runs/recipe-v5000, session (s)); about twice as long on one thread beside another job.
# OUT/ground-mix is the grounded model the recipe's SFT starts from (`--policy qwen --model OUT/ground-mix`
# answers in one turn); each stage's result.json holds picked-right and box IoU on 600 held-out `test` queries
# beside the random-shape and colour-only baselines.
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
THREADS=${THREADS:-1}  # the ground stages' torch threads (scripts/train_shapes.sh: 2, nothing runs beside them)
# perception pretraining's steps. A base with another count is another "pretrained" model, so every later stage
# differs: 5,000 (24 min) makes the shipped agent and docs/results.md (SFT + RL test gIoU 0.382 at 30 RL steps against 2,500
# steps' 0.336, docs/shapes.md "2026-11-29 (s)"); kind read off the tokens rose from 0.34 at 2,500 steps to 0.45 at
# 5,000 (docs/shapes.md (r)), so longer may help again
VISION_STEPS=${VISION_STEPS:-5000}
mkdir -p "$OUT"
source scripts/shapes_lib.sh

if [ ! -f "$OUT/base/model.safetensors" ]; then
    resume=""
    if [ -f "$OUT/base/vision-checkpoint/vision_state.pt" ]; then resume="--resume"; else rm -rf "$OUT/base"; fi
    say "base model -> $OUT/base $resume"
    device=(); flags=("$@")  # the training commands' --device, if given, is the perception stage's too
    for i in "${!flags[@]}"; do [ "${flags[$i]}" = --device ] && device=(--device "${flags[$((i + 1))]}"); done
    timed base $RS shapes model --out "$OUT/base" --vision-steps "$VISION_STEPS" --rescale-visual $resume "${device[@]}"
fi
# the stages stop at fixed steps of longer schedules (the first's in the config: 2625 of 5000, as measured in
# docs/shapes.md (n)); --stop-after replays them step for step on a machine of any speed
train "$OUT/ground-1" 0 ground --config configs/ground_shapes_cpu.yaml --threads "$THREADS" --model "$OUT/base" "$@"
train "$OUT/ground-2" 0 ground --config configs/ground_shapes_cpu.yaml --threads "$THREADS" --model "$OUT/ground-1" \
    --steps 2800 --stop-after 735 --lr 1e-3 --curriculum 0,0 "$@"
train "$OUT/ground-mix" 0 ground --config configs/ground_shapes_cpu.yaml --threads "$THREADS" --model "$OUT/ground-2" \
    --queries mix --steps 1400 --stop-after 1400 --lr 1e-3 --curriculum 0,0 "$@"
for stage in ground-1 ground-2 ground-mix; do
    .venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1]))['after']; print(sys.argv[2], json.dumps({k: r[k] for k in ('n', 'picked', 'iou', 'random_shape', 'named_colour', 'by_named')}))" \
        "$OUT/$stage/result.json" "$stage"
done
