"""Lock-step batched episodes against one by one: the same shapes episodes, the qwen policy, greedy.

    OMP_NUM_THREADS=1 .venv/bin/python bench/episodes_batched.py [--episodes 32] [--batch-sizes 1,8,32]
        [--repeats 3] [--model auto|random|DIR] [--max-new-tokens 200] [--max-turns 8] [--out FILE.json]

`rsagent.runner.run_episodes` plays `--episodes` shapes `test` scenes with the tiny shapes agent (`auto`:
runs/rlcheck-s0/rl when this checkout has it, else the copy shipped as `--policy demo`; `random`: a fresh
random shapes model, whose answers are mostly malformed) and grabcut, once per batch size: 1 is one by one,
B advances B episodes per policy call (one batched prefill and decode). Each run gets a fresh segmenter and
policy, so no encoding or KV cache carries over; the batch sizes take turns `--repeats` times (so a change in
the machine's load falls on all of them) and the median run counts. Reported per batch size: wall seconds,
episodes per second and its ratio to one by one, turns, generated tokens, the policy's and the tool's share,
and how many trajectories equal the one-by-one run's turn for turn (answer texts and final IoU): under greedy
decoding they should all, unless padding changes a float32 sum enough to flip a near-tie between two tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from common import add_common_args, finish, shapes_tasks, start, table, tiny_agent
from rsagent.env.episode import EpisodeConfig
from rsagent.policies.qwen import QwenConfig, QwenPolicy, load_processor, load_qwen_model, pixel_limits
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter


def play(folder: str, model, processor, tasks, batch_size: int, args) -> dict:
    policy = QwenPolicy(QwenConfig(model=folder, device="cpu", dtype="float32", temperature=0.0,
                                   max_new_tokens=args.max_new_tokens), model=model, processor=processor)
    segmenter = make_segmenter("grabcut")  # fresh: no view is encoded already
    t0 = time.perf_counter()
    trajs = run_episodes(policy, segmenter, tasks, EpisodeConfig(max_turns=args.max_turns), batch_size=batch_size,
                         progress=False)
    wall = time.perf_counter() - t0
    turns = [t for tr in trajs for t in tr.turns]
    return {"batch_size": batch_size, "wall_s": wall, "episodes": len(trajs), "turns": len(turns),
            "generated_tokens": policy.stats["generated_tokens"], "policy_calls": policy.stats["calls"],
            "policy_s": sum(t.seconds.get("policy", 0.0) for t in turns),
            "tool_s": sum(t.seconds.get("tool", 0.0) for t in turns),
            "mean_iou": float(np.mean([tr.metrics.get("iou", 0.0) for tr in trajs])),
            "failed": sum(tr.final.get("reason") == "failed" for tr in trajs),
            "trajectories": {tr.sample_id: ([t.assistant for t in tr.turns], tr.metrics.get("iou")) for tr in trajs}}


def first_difference(a: tuple[list[str], float], b: tuple[list[str], float]) -> int | None:
    """The first turn (1-based) where two plays of an episode differ; 0 for the final IoU alone; None if equal."""
    for i, (x, y) in enumerate(zip(a[0], b[0]), 1):
        if x != y:
            return i
    if len(a[0]) != len(b[0]):
        return min(len(a[0]), len(b[0])) + 1
    return None if a[1] == b[1] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated; 1 (one by one) is always run first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch size, in turns; the median counts")
    parser.add_argument("--model", default="auto", help="auto, random, or a Qwen2.5-VL shapes model folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="per answer (the agent's training budget)")
    parser.add_argument("--max-turns", type=int, default=8)
    add_common_args(parser)
    args = parser.parse_args()
    info = start(args)
    sizes = [1] + [b for b in dict.fromkeys(int(s) for s in args.batch_sizes.split(",")) if b != 1]
    with tempfile.TemporaryDirectory(prefix="rsagent-bench-model-") as tmp:
        folder, label = tiny_agent(args.model, tmp)
        model = load_qwen_model(folder, "cpu", torch.float32)
        processor = load_processor(folder, *pixel_limits(folder))
        tasks = shapes_tasks(args.split, args.episodes)
        play(folder, model, processor, tasks[:2], 2, args)  # warm-up, not counted
        plays = [[play(folder, model, processor, tasks, b, args) for b in sizes] for _ in range(args.repeats)]
    runs = []
    for i in range(len(sizes)):
        repeats = sorted((p[i] for p in plays), key=lambda r: r["wall_s"])
        if any(r["trajectories"] != repeats[0]["trajectories"] for r in repeats):
            print(f"batch {sizes[i]}: the repeats did not play the same trajectories")
        runs.append(repeats[len(repeats) // 2] | {"wall_s_all": [round(r["wall_s"], 3) for r in repeats]})
    base = runs[0]
    rows, results = [], []
    for r in runs:
        diffs = {sid: first_difference(base["trajectories"][sid], traj) for sid, traj in r["trajectories"].items()}
        differing = {sid: turn for sid, turn in diffs.items() if turn is not None}
        rate = r["episodes"] / r["wall_s"]
        ratio = rate / (base["episodes"] / base["wall_s"])
        rows.append([r["batch_size"], f"{r['wall_s']:.1f}", f"{rate:.3f}", f"{ratio:.2f}",
                     f"{r['turns'] / r['episodes']:.2f}", r["generated_tokens"],
                     f"{r['generated_tokens'] / r['policy_s']:.0f}", f"{r['policy_s'] / r['wall_s']:.2f}",
                     f"{r['tool_s'] / r['wall_s']:.2f}", f"{r['mean_iou']:.3f}",
                     f"{r['episodes'] - len(differing)}/{r['episodes']}"])
        results.append({k: v for k, v in r.items() if k != "trajectories"} | {
            "episodes_per_s": rate, "differs_from_one_by_one": differing})
    print(f"\n{args.episodes} shapes {args.split} episodes, {label}, grabcut, greedy, up to {args.max_turns} turns "
          f"and {args.max_new_tokens} new tokens per answer, CPU float32; median of {args.repeats} runs\n")
    print(table(["batch", "wall s", "episodes/s", "ratio to 1 by 1", "turns/ep", "gen tokens", "gen tokens/s (policy)",
                 "policy share", "tool share", "mean IoU", "same as 1 by 1"], rows))
    for r in results[1:]:
        if r["differs_from_one_by_one"]:
            print(f"batch {r['batch_size']}: episodes that differ (first differing turn; 0 = final IoU only): "
                  f"{r['differs_from_one_by_one']}")
    finish(args, info, {"model": label, "runs": results})


if __name__ == "__main__":
    main()
