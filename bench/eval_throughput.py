"""`rsagent eval` throughput in samples per second: the oracle and the trained tiny agent on the same shapes samples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_throughput.py [--n 64] [--split test] [--batch-size 16]
        [--policies oracle,demo] [--max-turns 8] [--workers 1] [--repeats 3] [--out FILE.json]

Each policy runs `rsagent.eval.run.evaluate` (what `rsagent eval --dataset shapes --split SPLIT:N` calls) with
grabcut on the first `--n` samples of the split, writing results.jsonl, trajectories, masks and summary.json
into a temporary folder; report.html is left out (bench/eval_run.py measures that part). Policies: `oracle`
(the scripted expert, reads the ground truth), `demo` (`--policy demo`: the trained shapes agent shipped with
rsagent, greedy, 200 new tokens per answer, CPU float32), `agent` (the same agent's fp32 checkpoint
runs/rlcheck-s0/rl through `--policy qwen`, where this checkout has it). With one worker the policy is built
once, before the timed runs, and the seconds that took are reported apart (`build s`, the first import of the
model code included); with more, each worker process builds its own inside every run. The policies take turns `--repeats`
times, so a change in the machine's load falls on all of them, and the median run counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

from common import add_common_args, finish, start, table, tiny_agent
from rsagent.env.episode import EpisodeConfig
from rsagent.eval.run import DatasetSpec, evaluate
from rsagent.segmenters import make_segmenter


def policy_factory(name: str):
    if name == "oracle":
        from rsagent.policies.oracle import OraclePolicy

        return OraclePolicy
    if name == "demo":
        from rsagent.policies.demo_agent import demo_policy

        return partial(demo_policy, device="cpu")
    if name == "agent":
        from rsagent.policies.qwen import QwenConfig, QwenPolicy

        folder, _ = tiny_agent("auto", "")
        return partial(QwenPolicy, QwenConfig(model=folder, device="cpu", max_new_tokens=200))
    raise SystemExit(f"unknown policy {name!r}: oracle, demo or agent")


def build(name: str, workers: int):
    """(factory for evaluate, seconds to build the policy): with one worker the policy is built here, once."""
    factory = policy_factory(name)
    if workers > 1:
        return factory, 0.0
    t0 = time.perf_counter()
    policy = factory()
    return (lambda: policy), time.perf_counter() - t0


def run(name: str, factory, spec: DatasetSpec, out: Path, args) -> dict:
    t0 = time.perf_counter()
    summary = evaluate(spec, out, policy_factory=factory, segmenter_factory=partial(make_segmenter, "grabcut"),
                       episode=EpisodeConfig(max_turns=args.max_turns), batch_size=args.batch_size,
                       workers=args.workers, progress=False, report=False, argv=[])
    wall = time.perf_counter() - t0
    return {"policy": name, "identifier": summary["reproduce"]["models"]["policy"], "n": summary["n"], "wall_s": wall,
            "samples_per_s": summary["n"] / wall, "gIoU": summary["gIoU"], "turns": summary["turns"]["mean"],
            "failed": summary["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="the first N samples of the split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--root", default=None, help="shapes root (default: rsagent's shapes cache)")
    parser.add_argument("--policies", default="oracle,demo", help="comma-separated: oracle, demo, agent")
    parser.add_argument("--batch-size", type=int, default=16, help="episodes in lock-step per policy call")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy, in turns; the median counts")
    add_common_args(parser)
    args = parser.parse_args()
    info = start(args)
    from rsagent.data.shapes import DEFAULT_ROOT

    spec = DatasetSpec.create("shapes", args.root or DEFAULT_ROOT, f"{args.split}:{args.n}")
    spec.load()  # writes the split first if the cache lacks it, outside the timed runs
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    built = {name: build(name, args.workers) for name in names}
    with tempfile.TemporaryDirectory(prefix="rsagent-bench-evalrate-") as tmp:
        plays = [[run(name, built[name][0], spec, Path(tmp) / f"{name}-{k}", args) for name in names]
                 for k in range(args.repeats)]
    results = []
    for i, name in enumerate(names):
        repeats = sorted((p[i] for p in plays), key=lambda r: r["wall_s"])
        results.append(repeats[len(repeats) // 2] | {"build_s": built[name][1],
                                                     "wall_s_all": [round(r["wall_s"], 2) for r in repeats]})
    base = results[0]["samples_per_s"]
    print(f"\nrsagent eval on shapes {args.split}:{args.n}, grabcut, up to {args.max_turns} turns, "
          f"batch {args.batch_size}, {args.workers} worker(s), no report.html; median of {args.repeats} runs\n")
    print(table(["policy", "samples/s", f"ratio to {results[0]['policy']}", "s/sample", "wall s", "build s",
                 "turns/sample", "gIoU", "failed"],
                [[r["policy"], f"{r['samples_per_s']:.2f}", f"{r['samples_per_s'] / base:.3f}",
                  f"{1 / r['samples_per_s']:.3f}", f"{r['wall_s']:.1f}", f"{r['build_s']:.1f}", f"{r['turns']:.2f}",
                  f"{r['gIoU']:.4f}", r["failed"]]
                 for r in results]))
    finish(args, info, {"runs": results})


if __name__ == "__main__":
    main()
