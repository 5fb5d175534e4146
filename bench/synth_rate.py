"""`rsagent synth` throughput with GrabCut: accepted trajectories per hour, in-process and with local
worker processes, on the same items in one run.

    .venv/bin/python bench/synth_rate.py [--num 120] [--workers 2] [--dataset yoloseg --root ../shared/data/coco128-seg]

Each configuration synthesizes the same items into its own folder; their exports must be identical
(checked here). Reported: items and accepted trajectories per hour of wall time, per worker, and the
wall-time ratio of the worker run to the in-process run. On a machine with C cores, workers beyond C
only compete for them.
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
import time
from functools import partial
from pathlib import Path

from rsagent.eval.run import DatasetSpec
from rsagent.segmenters import make_segmenter
from rsagent.synth.run import EXPORTS, SynthConfig, synthesize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="yoloseg")
    parser.add_argument("--root", default=str(DATA / "coco128-seg"))
    parser.add_argument("--num", type=int, default=120, help="items per configuration (default 120)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = DatasetSpec.create(args.dataset, args.root)
    config = SynthConfig(seed=args.seed, num=args.num)
    tmp = Path(tempfile.mkdtemp(prefix="rsagent-bench-synth-"))
    rows = []
    for workers in (1, args.workers):
        out = tmp / f"workers{workers}"
        t0 = time.perf_counter()
        stats = synthesize(spec, out, config=config, segmenter_factory=partial(make_segmenter, "grabcut"),
                           workers=workers, progress=False, gallery=0)
        wall = time.perf_counter() - t0
        rows.append((workers, wall, stats["items"], stats["accepted"], out))
    print(f"{args.dataset} {args.root}: {args.num} items, seed {args.seed}, grabcut, 8 turns")
    print(f"{'workers':>7} {'wall s':>8} {'items':>6} {'accepted':>8} {'acc/h':>8} {'acc/h/worker':>12} {'wall ratio':>10}")
    for workers, wall, items, accepted, _ in rows:
        rate = accepted / wall * 3600
        print(f"{workers:>7} {wall:>8.1f} {items:>6} {accepted:>8} {rate:>8.0f} {rate / workers:>12.0f} "
              f"{wall / rows[0][1]:>10.3f}")
    same = all(filecmp.cmp(rows[0][4] / name, row[4] / name, shallow=False) for row in rows[1:] for name in EXPORTS
               if (rows[0][4] / name).exists())
    print(f"exports identical across executors: {same}")
    best = max(r[3] / r[1] for r in rows)
    print(f"5,000 accepted trajectories at the best rate: {5000 / best / 3600:.2f} h")


if __name__ == "__main__":
    main()
