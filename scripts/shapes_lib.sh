# Shell helpers shared by scripts/train_shapes.sh and scripts/ablation_shapes.sh (sourced, not run).
# They expect RS (the rsagent command) and EVAL_N (scenes per split) to be set.

# The recipe's RL arguments, shared by its SFT + RL run and the ablation's RL arms so they cannot drift apart:
# --exclude-kinds alone keeps every query kind, absent ones too (the config leaves those out, for SFT models
# that had not learnt them; docs/training.md)
RL_ARGS=(--config configs/rl_shapes_cpu.yaml --exclude-kinds)
# and its SFT's (the data and the starting model are the caller's: OUT/synth, OUT/ground-mix). The grounded
# model's tower is kept, as grounding keeps it: training it under SFT cost 0.11 gIoU (docs/shapes.md, 2026-11-28 (o))
SFT_ARGS=(--config configs/sft_shapes_cpu.yaml --lr 1e-3 --freeze-vision)

say() { echo "[$(date +%H:%M:%S)] $*"; }

# beside LOG COMMAND...: run COMMAND (a function too) on the second core, its output in LOG; `rejoin` waits
# for it and stops the script if it failed. One side job at a time; a script stopped by an error stops its
# side job too (every stage resumes when the script runs again).
side="" side_log=""
beside() {
    local log=$1; shift
    mkdir -p "$(dirname "$log")"
    say "on the second core: $* (log: $log)"
    "$@" > "$log" 2>&1 &
    side=$! side_log=$log
}
rejoin() {
    local pid=$side; side=""
    say "waiting for the second core's job (log: $side_log)"
    wait "$pid" || { say "the second core's job failed: see $side_log"; exit 1; }
}
trap '[ -n "$side" ] && { pkill -P "$side" 2>/dev/null; kill "$side" 2>/dev/null; }; true' EXIT

# timed STAGE COMMAND...: run COMMAND and add a line "STAGE<TAB>seconds<TAB>exit status<TAB>finished at" to
# OUT/logs/times.tsv (OUT is the caller's): a stage run in parts across sessions has a line a part, and
# scripts/shapes_results.py sums them into docs/results.md. A part killed with its shell (a session's end) has none.
timed() {
    local stage=$1 start=$SECONDS rc=0; shift
    "$@" || rc=$?
    mkdir -p "$OUT/logs"
    printf '%s\t%s\t%s\t%s\n' "$stage" $((SECONDS - start)) "$rc" "$(date -Iseconds)" >> "$OUT/logs/times.tsv"
    return "$rc"
}

# train DIR SEED KIND rsagent-train-args...: resume from the newest checkpoint, or start over when there is none
train() {
    local dir=$1 seed=$2 kind=$3; shift 3
    [ -f "$dir/model.safetensors" ] && { say "done: $dir"; return 0; }
    local resume=""
    if ls -d "$dir"/checkpoint-* >/dev/null 2>&1; then resume="--resume"; else rm -rf "$dir"; fi
    say "train $kind $dir $resume"
    timed "${dir#"$OUT"/}" $RS train "$kind" "$@" --out "$dir" --seed "$seed" $resume
}

# evaluate POLICY-ARGS... -- SPLIT DIR [more eval args]: greedy episodes on the first EVAL_N scenes of SPLIT,
# with the settings of training's rollouts. A finished run of fewer scenes is extended (eval --resume keeps
# its samples), an interrupted one resumed.
evaluate() {
    local args=(); while [ "$1" != "--" ]; do args+=("$1"); shift; done; shift
    local split=$1 dir=$2; shift 2
    if [ -f "$dir/summary.json" ] && [ "$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["n"])' \
            "$dir/summary.json")" = "$EVAL_N" ]; then
        say "done: $dir"; return 0
    fi
    local resume=""; [ -f "$dir/run.json" ] && resume="--resume"
    say "eval ${args[*]} on $split:$EVAL_N -> $dir $resume"
    timed "${dir#"$OUT"/}" $RS eval --dataset shapes --split "$split:$EVAL_N" "${args[@]}" --max-new-tokens 200 \
        --batch-size 16 --out "$dir" $resume "$@"
}

# evaluate_stages STAGE...: `evaluate` each OUT/STAGE (OUT is the caller's) for 8 turns on `test` and `test-novel`,
# into OUT/eval/STAGE-SPLIT
evaluate_stages() {
    local split stage
    for split in test test-novel; do
        for stage in "$@"; do
            evaluate --policy qwen --model "$OUT/$stage" --max-turns 8 -- "$split" "$OUT/eval/$stage-$split"
        done
    done
}
