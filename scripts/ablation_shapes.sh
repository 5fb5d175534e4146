#!/usr/bin/env bash
# The published ablation on shapes (docs/results.md), after the recipe (scripts/train_shapes.sh, run first
# by this script when its stages are not done):
#   untrained | SFT only | RL only (from the untrained model) | SFT + RL | SFT + RL without the final reward
# each on 500 `test` and 500 `test-novel` scenes; the SFT + RL agent at 1, 2, 4 and 8 turns; the oracle
# expert (8 turns) and box-only (ground-truth boxes, then submit) for scale; SFT + RL for more training
# seeds (SEEDS="1 2"); then docs/results.md's tables and plot (scripts/shapes_results.py).
#
#   bash scripts/ablation_shapes.sh [OUT=runs/recipe] [--device cuda]
#
# Resumable like the recipe: finished stages are skipped, interrupted training and evaluation resume.
# RL only runs RL_ONLY_STEPS steps (default 5): the untrained model writes no parseable call, so every
# group's rewards are equal and GRPO has nothing to learn from (its log's groups_skipped shows it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe}
shift $(( $# < 1 ? $# : 1 ))
RS=.venv/bin/rsagent
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EVAL_N=${EVAL_N:-500}
SEEDS=${SEEDS:-"1 2"}
RL_ONLY_STEPS=${RL_ONLY_STEPS:-5}
say() { echo "[$(date +%H:%M:%S)] $*"; }

EVAL_N=$EVAL_N bash scripts/train_shapes.sh "$OUT" 0 "$@"

train_rl() {  # train_rl DIR SEED rsagent-train-rl-args...
    local dir=$1 seed=$2; shift 2
    [ -f "$dir/model.safetensors" ] && { say "done: $dir"; return 0; }
    local resume=""
    if ls -d "$dir"/checkpoint-* >/dev/null 2>&1; then resume="--resume"; else rm -rf "$dir"; fi
    say "train rl $dir $resume"
    $RS train rl --config configs/rl_shapes_cpu.yaml --out "$dir" --seed "$seed" $resume "$@"
}
evaluate() {  # evaluate POLICY-ARGS... -- SPLIT DIR [more eval args]
    local args=(); while [ "$1" != "--" ]; do args+=("$1"); shift; done; shift
    local split=$1 dir=$2; shift 2
    [ -f "$dir/summary.json" ] && { say "done: $dir"; return 0; }
    local resume=""; [ -f "$dir/run.json" ] && resume="--resume"
    say "eval ${args[*]} on $split -> $dir"
    $RS eval --dataset shapes --split "$split:$EVAL_N" "${args[@]}" --max-new-tokens 200 --batch-size 16 \
        --out "$dir" $resume "$@"
}

train_rl "$OUT/rl-only" 0 --model "$OUT/base" --max-steps "$RL_ONLY_STEPS" "$@"
train_rl "$OUT/rl-nofinal" 0 --model "$OUT/sft" --reward-final 0 "$@"
for seed in $SEEDS; do train_rl "$OUT/rl-s$seed" "$seed" --model "$OUT/sft" "$@"; done

for split in test test-novel; do
    for stage in rl-only rl-nofinal $(for s in $SEEDS; do echo rl-s$s; done); do
        evaluate --policy qwen --model "$OUT/$stage" --max-turns 8 -- "$split" "$OUT/eval/$stage-$split"
    done
    evaluate --policy oracle --max-turns 8 -- "$split" "$OUT/eval/oracle-$split"
    [ -f "$OUT/eval/box-only-$split.json" ] || .venv/bin/python bench/shapes_oracle.py --n "$EVAL_N" \
        --split "$split" --out "$OUT/eval/box-only-$split.json"
done
for turns in 1 2 4; do
    evaluate --policy qwen --model "$OUT/rl" --max-turns "$turns" -- test "$OUT/eval/rl-test-turns$turns"
done
.venv/bin/python scripts/shapes_results.py "$OUT" --out docs/results.md
say "ablation done: docs/results.md"
