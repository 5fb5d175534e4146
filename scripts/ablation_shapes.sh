#!/usr/bin/env bash
# The published ablation on shapes (docs/results.md), around the recipe (scripts/train_shapes.sh, whose
# stages it runs when they are not done):
#   untrained | grounded (before SFT) | SFT only | RL only (from the untrained model) |
#   RL only (from the grounded model) | SFT + RL | SFT + RL without the final reward
# each on 500 `test` and 500 `test-novel` scenes; the SFT + RL agent at 1, 2, 4 and 8 turns; the oracle
# expert (8 turns) and box-only (ground-truth boxes, then submit) for scale; SFT + RL for more training
# seeds (SEEDS="1": SFT and RL each with that seed); then docs/results.md's tables and plot (scripts/shapes_results.py).
#
#   bash scripts/ablation_shapes.sh [OUT=runs/recipe] [--device cuda]
#
# Resumable like the recipe: finished stages are skipped, interrupted training and evaluation resume. The
# recipe runs up to SFT, then two lanes, one a core (logs of the second in OUT/logs/ablation-lane2.log), each
# about 2 h 50 min by runs/recipe-v2's stages (session (v), one thread a job, OUT/logs/times.tsv; RL arms 60
# steps). First lane: the recipe's RL 44.5 min, RL only from the grounded model 43.5, RL without the final
# reward 50, their evaluations 3-5 min a split, the oracle bench about 6 a split, the turn budgets. Second
# lane: the untrained model's evaluations 10 min a split, the grounded model's 4, RL from the untrained model 6
# and its evaluations 20, the SFT seed 57 and its RL seed 54 (beside the first lane).
# "RL only" as the published ablation has it, from the untrained model, runs RL_UNTRAINED_STEPS steps
# (default 3): that model writes no parseable call, so every group's rewards are equal and GRPO has nothing
# to learn from (its log says so: episodes_trained 0). "RL only" from
# the grounded model, the one SFT starts from, runs RL_ONLY_STEPS steps (default 60, as many as SFT + RL's RL,
# about 45 min): that model rarely submits, so most episodes play all 8 turns.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe}
shift $(( $# < 1 ? $# : 1 ))
export RS=${RS:-.venv/bin/rsagent}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export EVAL_N=${EVAL_N:-500}
SEEDS=${SEEDS:-"1"}
RL_ONLY_STEPS=${RL_ONLY_STEPS:-60}
RL_UNTRAINED_STEPS=${RL_UNTRAINED_STEPS:-3}

# the recipe up to its SFT model: everything on the second lane needs only that and the grounded model
UNTIL=sft bash scripts/train_shapes.sh "$OUT" 0 "$@"

source scripts/shapes_lib.sh

# Two lanes (`beside`, scripts/shapes_lib.sh), from SFT on. The second core: the untrained and grounded models'
# evaluations, RL from the untrained model and its evaluations (these three play all 8 turns), then the
# other seeds: SFT seed K from the grounded model, RL seed K from the seed-0 SFT model. The first: the rest of
# the recipe (RL, the SFT and RL evaluations) on one thread, then the RL arms, the oracle and the turn budgets.
second_lane() {
    evaluate_stages base ground-mix
    train "$OUT/rl-untrained" 0 rl "${RL_ARGS[@]}" --model "$OUT/base" --max-steps "$RL_UNTRAINED_STEPS" "$@"
    evaluate_stages rl-untrained
    local seed
    for seed in $SEEDS; do
        train "$OUT/sft-s$seed" "$seed" sft "${SFT_ARGS[@]}" --data "$OUT/synth" --model "$OUT/ground-mix" "$@"
        train "$OUT/rl-s$seed" "$seed" rl "${RL_ARGS[@]}" --model "$OUT/sft" "$@"
        evaluate_stages "sft-s$seed" "rl-s$seed"
    done
}
beside "$OUT/logs/ablation-lane2.log" second_lane "$@"
THREADS=1 bash scripts/train_shapes.sh "$OUT" 0 "$@"
train "$OUT/rl-only" 0 rl "${RL_ARGS[@]}" --model "$OUT/ground-mix" --max-steps "$RL_ONLY_STEPS" "$@"
train "$OUT/rl-nofinal" 0 rl "${RL_ARGS[@]}" --model "$OUT/sft" --reward-final 0 "$@"
evaluate_stages rl-only rl-nofinal
for split in test test-novel; do
    evaluate --policy oracle --max-turns 8 -- "$split" "$OUT/eval/oracle-$split"
    box="$OUT/eval/box-only-$split.json"
    if [ "$(.venv/bin/python -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(iter(d["settings"].values()))["all"]["n"])' \
            "$box" 2>/dev/null)" != "$EVAL_N" ]; then
        say "box-only and oracle turn budgets on $split:$EVAL_N -> $box"
        .venv/bin/python bench/shapes_oracle.py --n "$EVAL_N" --split "$split" --out "$box"
    fi
done
for turns in 1 2 4; do
    evaluate --policy qwen --model "$OUT/rl" --max-turns "$turns" -- test "$OUT/eval/rl-test-turns$turns"
done
rejoin
.venv/bin/python scripts/shapes_results.py "$OUT" --out docs/results.md --notes docs/results-notes.md
say "ablation done: docs/results.md"
