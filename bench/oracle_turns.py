"""Oracle expert on a fixed set of COCO128 targets: mean IoU by turn budget, with and without zoom.

    .venv/bin/python bench/oracle_turns.py [--targets 60] [--segmenter grabcut]

The fixed set: every target whose polygon covers at least 0.1% of its image, in sample-id order,
taken at an even stride to `--targets` items. Size buckets: small < 1% of the image, medium < 10%.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from rsagent import EpisodeConfig, EpisodeTask, OracleConfig, OraclePolicy, load_image, make_segmenter, run_episodes
from rsagent.data.yoloseg import load_yolo_seg

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg"
BUCKETS = (("small", 0.0, 0.01), ("medium", 0.01, 0.10), ("large", 0.10, 1.01))


def fixed_targets(root: Path, count: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        targets = [t for t in load_yolo_seg(root) if t.area_fraction >= 0.001]
    stride = max(1, len(targets) // count)
    return targets[::stride][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DATA)
    parser.add_argument("--targets", type=int, default=60)
    parser.add_argument("--segmenter", default="grabcut")
    args = parser.parse_args()
    targets = fixed_targets(args.root, args.targets)
    images = {}
    tasks = []
    for t in targets:
        if t.image_path not in images:
            images[t.image_path] = load_image(t.image_path)
        tasks.append(EpisodeTask(images[t.image_path], t.query, t.sample_id, t.ground_truth(), str(t.image_path)))
    fractions = np.array([t.ground_truth().mask.mean() for t in targets])
    segmenter = make_segmenter(args.segmenter)
    settings = [
        ("2 turns (box, submit)", 2, OracleConfig()),
        ("8 turns, clicks only (no zoom)", 8, OracleConfig(zoom_below=0.0)),
        ("8 turns, expert (zoom + clicks)", 8, OracleConfig()),
    ]
    counts = {name: int(((fractions >= lo) & (fractions < hi)).sum()) for name, lo, hi in BUCKETS}
    print(f"{len(tasks)} targets from {args.root} ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
          f"segmenter {segmenter.identifier}")
    print(f"{'setting':34s} {'mIoU':>6s} " + " ".join(f"{n:>7s}" for n, _, _ in BUCKETS) + f" {'turns':>6s} {'s/ep':>6s}")
    for label, max_turns, cfg in settings:
        t0 = time.perf_counter()
        trajs = run_episodes(OraclePolicy(cfg), segmenter, tasks, EpisodeConfig(max_turns=max_turns), progress=False)
        seconds = (time.perf_counter() - t0) / len(tasks)
        ious = np.array([tr.metrics["iou"] for tr in trajs])
        per_bucket = [ious[(fractions >= lo) & (fractions < hi)] for _, lo, hi in BUCKETS]
        turns = np.mean([len(tr.turns) for tr in trajs])
        print(f"{label:34s} {ious.mean():6.3f} " + " ".join(f"{b.mean() if b.size else float('nan'):7.3f}" for b in per_bucket)
              + f" {turns:6.2f} {seconds:6.2f}")


if __name__ == "__main__":
    main()
