"""`rsagent eval` on a fixed COCO128 manifest: executors compared in one run, and the cost of the
run's bookkeeping (results lines, trajectories, masks, report) against the episodes themselves.

    .venv/bin/python bench/eval_run.py [--targets 60] [--max-turns 4] [--workers 2] [--no-ray]

Every configuration evaluates the same samples; their summaries (the compared part) must be identical,
which this script checks. Times are wall-clock seconds of whole runs, reported as ratios to the
in-process run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

from rsagent.data.yoloseg import load_yolo_seg
from rsagent.env.episode import EpisodeConfig
from rsagent.eval import DatasetSpec, comparable, evaluate, score
from rsagent.policies.oracle import OraclePolicy
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg"


def write_manifest(folder: Path, count: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        targets = [t for t in load_yolo_seg(DATA) if t.area_fraction >= 0.001]
    targets = targets[:: max(1, len(targets) // count)][:count]
    path = folder / "manifest.jsonl"
    with open(path, "w") as fh:
        for t in targets:
            poly = (t.polygon * [t.width, t.height]).ravel().round(2).tolist()
            fh.write(json.dumps({"sample_id": t.sample_id, "image": str(t.image_path), "query": t.query,
                                 "polygons": [poly]}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=60)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rsagent-bench-eval-"))
    spec = DatasetSpec.create("manifest", write_manifest(tmp, args.targets))
    episode = EpisodeConfig(max_turns=args.max_turns)
    common = {"policy_factory": OraclePolicy, "segmenter_factory": partial(make_segmenter, "grabcut"),
                  "episode": episode, "progress": False}

    # the episodes alone: images loaded up front, no files written
    samples = spec.load()
    from rsagent.env.episode import EpisodeTask

    tasks = []
    for s in samples:
        image, gt = s.load()
        tasks.append(EpisodeTask(image, s.query, s.sample_id, gt, str(s.image_path)))
    t0 = time.perf_counter()
    run_episodes(OraclePolicy(), make_segmenter("grabcut"), tasks, episode, progress=False)
    bare = time.perf_counter() - t0

    runs = [("in-process, no report", {"report": False}), ("in-process + report", {}),
            (f"local x{args.workers}, no report", {"workers": args.workers, "report": False})]
    if not args.no_ray:
        try:
            import ray  # noqa: F401

            runs.append((f"ray x{args.workers}, no report", {"executor": "ray", "workers": args.workers, "report": False}))
        except ImportError:
            print("ray not installed: skipped")
    results = {}
    for index, (name, kwargs) in enumerate(runs):
        t0 = time.perf_counter()
        summary = evaluate(spec, tmp / f"run{index}", **common, **kwargs)
        results[name] = (time.perf_counter() - t0, summary)
    t0 = time.perf_counter()
    scored = score(spec, tmp / "run0" / "masks", tmp / "score", progress=False, report=False)
    score_seconds = time.perf_counter() - t0

    base_seconds, base = results["in-process, no report"]
    print(f"{len(samples)} samples, oracle + grabcut, max {args.max_turns} turns; gIoU {base['gIoU']:.4f} "
          f"cIoU {base['cIoU']:.4f}")
    print(f"{'episodes alone (run_episodes)':34s} {bare:7.2f} s  ratio {bare / base_seconds:5.2f}")
    for name, (seconds, summary) in results.items():
        same = comparable(summary) == comparable(base)
        print(f"{name:34s} {seconds:7.2f} s  ratio {seconds / base_seconds:5.2f}  summary identical: {same}")
    same_scores = (scored["gIoU"], scored["cIoU"]) == (base["gIoU"], base["cIoU"])
    print(f"{'score of the saved masks':34s} {score_seconds:7.2f} s  ratio {score_seconds / base_seconds:5.2f}  "
          f"same gIoU/cIoU: {same_scores}")
    print(f"outputs in {tmp}")


if __name__ == "__main__":
    main()
