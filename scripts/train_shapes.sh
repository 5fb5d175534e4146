#!/usr/bin/env bash
# The whole recipe on the shapes domain, from random weights, on one CPU (docs/results.md):
#   1. base    rsagent shapes model --vision-steps 600        random tiny Qwen2.5-VL, vision tower pretrained (~5 min)
#   2. synth   rsagent synth --dataset shapes --split train:5000 --mistake-loss   expert trajectories (~6 min)
#   3. sft     rsagent train sft --config configs/sft_shapes_cpu.yaml   cold-start SFT (~50 min)
#   4. rl      rsagent train rl --config configs/rl_shapes_cpu.yaml     GRPO on whole episodes (~32 min)
#   5. eval    rsagent eval on 500 `test` and 500 `test-novel` scenes, for the base, SFT and SFT + RL (~25 min: the untrained model writes 8 turns of noise)
#
#   bash scripts/train_shapes.sh [OUT=runs/recipe] [SEED=0] [--device cuda]
#
# Every stage is skipped when its output is complete and resumed where it stopped otherwise, so the
# script can be run again after a session ends (about 2 h of one thread in all; rerun from nothing on 2026-11-27 it reproduced every stage byte for byte). Extra flags go to
# the two training commands (for example --device cuda on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe}
SEED=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
RS=.venv/bin/rsagent
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EVAL_N=${EVAL_N:-500}
mkdir -p "$OUT"
source scripts/shapes_lib.sh

if [ ! -f "$OUT/base/model.safetensors" ]; then
    say "base model -> $OUT/base"
    rm -rf "$OUT/base"
    $RS shapes model --out "$OUT/base" --vision-steps 600 --seed "$SEED"
fi
if [ ! -f "$OUT/synth/sft.jsonl" ]; then
    resume=""; [ -f "$OUT/synth/run.json" ] && resume="--resume"
    say "synthesize -> $OUT/synth $resume"
    # --mistake-loss: the export the shipped agent was trained on (deliberate mistakes as targets too); without
    # it the wrong openings are context only, which did not yet do better across SFT seeds (docs/training.md)
    $RS synth --dataset shapes --split train:5000 --max-pixels 12544 --workers 1 --out "$OUT/synth" $resume \
        --mistake-loss
fi
train "$OUT/sft" "$SEED" sft --config configs/sft_shapes_cpu.yaml --data "$OUT/synth" --model "$OUT/base" "$@"
train "$OUT/rl" "$SEED" rl --config configs/rl_shapes_cpu.yaml --model "$OUT/sft" "$@"
for split in test test-novel; do
    for stage in base sft rl; do
        evaluate --policy qwen --model "$OUT/$stage" --max-turns 8 -- "$split" "$OUT/eval/$stage-$split"
    done
done
say "recipe done: $OUT/rl (compare: $RS compare $OUT/eval/sft-test $OUT/eval/rl-test)"
