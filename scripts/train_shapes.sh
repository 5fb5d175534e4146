#!/usr/bin/env bash
# The whole recipe on the shapes domain, from random weights, on a 2-core CPU (docs/results.md):
#   1. ground  scripts/shapes_grounding.sh: the base model (random tiny Qwen2.5-VL, vision tower pretrained
#              for 2,500 steps, ~15-27 min), then three `rsagent train ground` stages that teach it to box the
#              queried shape in the episode's words, the tower kept (~95 min): the stand-in for a pretrained
#              VLM's grounding
#   2. synth   rsagent synth --dataset shapes --split train:5000     expert trajectories (~10 min)
#   3. sft     rsagent train sft --config configs/sft_shapes_cpu.yaml --lr 1e-3 --freeze-vision   cold-start SFT,
#              the tower kept (~55 min)
#   4. rl      rsagent train rl --config configs/rl_shapes_cpu.yaml --exclude-kinds   GRPO on whole
#              episodes, every query kind (~35 min on one thread)
#   5. eval    rsagent eval on 500 `test` and 500 `test-novel` scenes, for the base, the grounded model,
#              SFT and SFT + RL (2-3 min a split for SFT and RL; 13 for the grounded model and 20 for the
#              untrained one, which play all 8 turns, on the second core beside SFT and RL)
#
#   bash scripts/train_shapes.sh [OUT=runs/recipe-g] [SEED=0] [--device cuda]
#
# Every stage is skipped when its output is complete and resumed where it stopped otherwise, so the
# script can be run again after a session ends. It uses two cores: synthesis runs beside the grounding
# stages and the slow evaluations beside SFT and RL (about 4.3 h of one thread in all, about 3.4 h on the
# 2-core machine; docs/training.md). SEED seeds SFT and RL; the grounding stages are the one
# "pretrained" model every seed starts from. Extra flags go to the training commands (for example
# --device cuda on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe-g}
SEED=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
export RS=${RS:-.venv/bin/rsagent}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EVAL_N=${EVAL_N:-500}
mkdir -p "$OUT"
source scripts/shapes_lib.sh

# The second core (`beside`, scripts/shapes_lib.sh): synthesis beside the grounding stages, then the base's
# and the grounded model's slow evaluations (they play all 8 turns) beside SFT and RL; logs in OUT/logs.
synthesize() {
    [ -f "$OUT/synth/sft.jsonl" ] && { say "done: $OUT/synth"; return 0; }
    local resume=""; [ -f "$OUT/synth/run.json" ] && resume="--resume"
    say "synthesize -> $OUT/synth $resume"
    # the expert's deliberately wrong openings stay in the context without loss (docs/training.md)
    $RS synth --dataset shapes --split train:5000 --max-pixels 12544 --workers 1 --out "$OUT/synth" $resume
}

beside "$OUT/logs/synth.log" synthesize
bash scripts/shapes_grounding.sh "$OUT" "$@"
rejoin
beside "$OUT/logs/eval-grounding.log" evaluate_stages base ground-mix
train "$OUT/sft" "$SEED" sft "${SFT_ARGS[@]}" --data "$OUT/synth" --model "$OUT/ground-mix" "$@"
train "$OUT/rl" "$SEED" rl "${RL_ARGS[@]}" --model "$OUT/sft" "$@"
evaluate_stages sft rl
rejoin
say "recipe done: $OUT/rl (compare: $RS compare $OUT/eval/sft-test $OUT/eval/rl-test)"
