#!/usr/bin/env bash
# The whole recipe on the shapes domain, from random weights, on a 2-core CPU (docs/results.md). Minutes are
# runs/recipe-v5000's stages (sessions s-t, docs/shapes.md "2026-11-29 (s)" and "(t)"), about 2 h 25 min in all;
# run from scratch in one go on a fresh machine (runs/recipe-w, session (w), docs/training.md "2026-11-29 (w)")
# it took 2 h 19 min: base 23, ground 23.5 + 7 + 15.5, SFT 27, RL 41 (partly beside other jobs), and its SFT + RL
# agent scored 0.382 on `test`, level with the shipped one:
#   1. ground  scripts/shapes_grounding.sh: the base model (random tiny Qwen2.5-VL, vision tower pretrained
#              for 5,000 steps, 24 min), then three `rsagent train ground` stages that teach it to box the
#              queried shape in the episode's words, the tower kept (24 + 7 + 16 min): the stand-in for a
#              pretrained VLM's grounding
#   2. synth   rsagent synth --dataset shapes --split train:5000     expert trajectories (6.5 min, on the second
#              core beside the base model)
#   3. sft     rsagent train sft --config configs/sft_shapes_cpu.yaml --lr 1e-3 --freeze-vision   cold-start SFT,
#              the tower kept (33 min)
#   4. rl      rsagent train rl --config configs/rl_shapes_cpu.yaml --exclude-kinds   GRPO on whole
#              episodes, every query kind; the checkpoint with the best held-out gIoU is kept (keep_best) (60 steps: 17 min for the first 30, 15.5 for the rest)
#   5. eval    rsagent eval on 500 `test` and 500 `test-novel` scenes for SFT and SFT + RL (3 min, the two
#              models side by side)
#
#   bash scripts/train_shapes.sh [OUT=runs/recipe] [SEED=0] [--device cuda]
#   UNTIL=sft bash scripts/train_shapes.sh ...   stops after SFT (scripts/ablation_shapes.sh starts its second
#                                                lane there, beside the recipe's RL)
#
# The shipped agent (src/rsagent/agents/shapes_demo) is this recipe's SFT + RL model on shapes generator
# version 2 (`bash scripts/train_shapes.sh runs/recipe-v2`, sessions u-v: the base, ground-1 and ground-2 copied
# from runs/recipe-v5000, which see attribute queries only, the same under both versions; RL 44.5 min beside the
# ablation), and docs/results.md its ablation. runs/recipe-v5000 is the same recipe on version 1 (its page: commit
# cab1c41). VISION_STEPS=2500 is the earlier recipe (runs/recipe-h: SFT + RL 0.336 against 0.382, both at 30 RL
# steps; its run from scratch of session (r) took 1 h 59 min, docs/training.md).
#
# Every stage is skipped when its output is complete and resumed where it stopped otherwise, so the
# script can be run again after a session ends; each stage's minutes, a line per part, go to
# OUT/logs/times.tsv. Synthesis runs on the second core beside the base model's pretraining; every later
# stage runs alone on THREADS=2 threads. On this machine one thread or two give the same result bit for bit
# (the run from scratch matched an earlier run on one thread, weights and scores). SEED seeds SFT and
# RL; the grounding stages are the one "pretrained" model every seed starts from. Extra flags go to the
# training commands (for example --device cuda on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe}
SEED=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
export RS=${RS:-.venv/bin/rsagent}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EVAL_N=${EVAL_N:-500}
mkdir -p "$OUT"
source scripts/shapes_lib.sh

# Synthesis runs on the second core (`beside`, scripts/shapes_lib.sh; its log in OUT/logs) beside the base model's
# perception pretraining (one thread); every later stage has the machine to itself and runs on THREADS threads
# (default 2). The untrained and grounded models' slow 8-turn evaluations are the ablation's
# (scripts/ablation_shapes.sh), not the recipe's.
export THREADS=${THREADS:-2}
synthesize() {
    [ -f "$OUT/synth/sft.jsonl" ] && { say "done: $OUT/synth"; return 0; }
    local resume=""; [ -f "$OUT/synth/run.json" ] && resume="--resume"
    say "synthesize -> $OUT/synth $resume"
    # the expert's deliberately wrong openings stay in the context without loss (docs/training.md)
    timed synth $RS synth --dataset shapes --split train:5000 --max-pixels 12544 --workers 1 --out "$OUT/synth" $resume
}

beside "$OUT/logs/synth.log" synthesize
bash scripts/shapes_grounding.sh "$OUT" "$@"
rejoin
OMP_NUM_THREADS=$THREADS train "$OUT/sft" "$SEED" sft "${SFT_ARGS[@]}" --data "$OUT/synth" --model "$OUT/ground-mix" "$@"
if [ "${UNTIL:-}" = sft ]; then say "stopped after SFT (UNTIL=sft): $OUT/sft"; exit 0; fi
OMP_NUM_THREADS=$THREADS train "$OUT/rl" "$SEED" rl "${RL_ARGS[@]}" --model "$OUT/sft" "$@"
beside "$OUT/logs/eval-sft.log" evaluate_stages sft
evaluate_stages rl
rejoin
say "recipe done: $OUT/rl (compare: $RS compare $OUT/eval/sft-test $OUT/eval/rl-test; each stage's minutes: $OUT/logs/times.tsv)"
