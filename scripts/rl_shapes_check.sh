#!/usr/bin/env bash
# The RL learning check on shapes (docs/training.md, "RL on shapes"): from an SFT checkpoint, GRPO with
# configs/rl_shapes_cpu.yaml for one seed, then the starting and the trained policy on the same 200
# held-out `test` scenes (greedy, as `rsagent eval` runs) and their paired difference.
#
#   bash scripts/rl_shapes_check.sh SFT_MODEL OUT [SEED] [EXTRA rsagent train rl FLAGS...]
#
# Resumable: a finished stage (its folder holds its summary) is skipped; an interrupted RL run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
SFT=${1:?usage: rl_shapes_check.sh SFT_MODEL OUT [SEED] [FLAGS...]}
OUT=${2:?usage: rl_shapes_check.sh SFT_MODEL OUT [SEED] [FLAGS...]}
SEED=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
RS=.venv/bin/rsagent
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
if [ ! -f "$OUT/rl/model.safetensors" ]; then
    resume=""
    if ls -d "$OUT"/rl/checkpoint-* >/dev/null 2>&1; then resume="--resume"; else rm -rf "$OUT/rl"; fi
    $RS train rl --config configs/rl_shapes_cpu.yaml --model "$SFT" --out "$OUT/rl" --seed "$SEED" $resume "$@"
fi
evaluate() {  # evaluate MODEL DIR
    [ -f "$2/summary.json" ] && return 0
    rm -rf "$2"
    $RS eval --dataset shapes --split test:200 --max-new-tokens 200 --policy qwen --model "$1" --max-turns 8 \
        --batch-size 16 --out "$2" --no-progress
}
evaluate "$SFT" "$OUT/eval-start"
evaluate "$OUT/rl" "$OUT/eval-rl"
$RS compare "$OUT/eval-start" "$OUT/eval-rl" --out "$OUT/compare.json"
