"""The toolbox's ceiling on shapes: oracle expert by turn budget, box-only, and a random-call policy.

    .venv/bin/python bench/shapes_oracle.py [--n 1000] [--split test] [--segmenter grabcut] [--out runs/shapes-oracle.json]

Samples 0..n-1 of the split (generated in memory, the same as `rsagent shapes make`). Settings:
- box as mask: the target parts' ground-truth boxes themselves (no segmenter, no agent);
- box-only: one `segment` with the ground-truth box per target part, then submit (8-turn budget);
- oracle expert (zoom + boxes + corrective clicks) at 2, 4 and 8 turns;
- random calls: uniformly random valid calls (segment / refine / zoom_in), then submit a random candidate;
- query-blind box: the same box for every query, then submit; the box is the best of a grid (corners on
  multiples of 28 px) on the first --blind-val `val` samples: what an agent that never reads the query
  can reach by learning one good box.
Reports mean IoU (= gIoU) with a 95% interval over samples, per query kind, turns used and seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence

import cv2
import numpy as np

from rsagent import EpisodeConfig, EpisodeTask, OracleConfig, OraclePolicy, make_segmenter, run_episodes
from rsagent.core.mask import GroundTruth, iou, mask_box
from rsagent.data.shapes.generate import generate
from rsagent.data.shapes.queries import QUERY_KINDS
from rsagent.env.episode import Episode
from rsagent.policies.base import Policy, format_answer


BLIND = "query-blind box (one box for every query, then submit)"


def _parts(mask: np.ndarray, limit: int) -> list[np.ndarray]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:limit]
    return [labels == i for i in order]


class BoxOnlyPolicy(Policy):
    """One ground-truth box per target part, then submit: what a box detector plus the segmenter gives."""

    name = "box-only"

    def act(self, episodes: Sequence[Episode]) -> list[str]:
        out = []
        for ep in episodes:
            parts = _parts(ep.task.gt.mask, ep.config.max_turns - 1)
            done = len(ep.candidates)
            if done < len(parts):
                view = ep.views[0]
                box = ep.to_frame_box(view, view.box_from_image(mask_box(parts[done])))
                out.append(format_answer("Box the next part.", "segment", {"box": box, "view": 0}))
            else:
                out.append(format_answer("Done.", "submit", {"mask_ids": [c.id for c in ep.candidates]}))
        return out


class RandomCallPolicy(Policy):
    """Valid calls with random arguments: the floor that tool use alone gives."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def act(self, episodes: Sequence[Episode]) -> list[str]:
        return [self._one(ep) for ep in episodes]

    def _one(self, ep: Episode) -> str:
        r = self.rng
        view = ep.views[ep.current_view]
        w, h = ep.frame.extent(view.size)
        if ep.turns_left <= 1:
            ids = [c.id for c in ep.candidates]
            pick = r.sample(ids, r.randint(0, min(2, len(ids)))) if ids else []
            return format_answer("Submit.", "submit", {"mask_ids": pick})
        x0, x1 = sorted(r.sample(range(w + 1), 2))
        y0, y1 = sorted(r.sample(range(h + 1), 2))
        point = [[r.randint(0, w - 1), r.randint(0, h - 1)]]
        choice = r.choice(["segment", "segment", "refine", "zoom_in"] if ep.candidates else ["segment", "zoom_in"])
        if choice == "segment":
            return format_answer("Try.", "segment", {"box": [x0, y0, x1, y1]})
        if choice == "zoom_in":
            return format_answer("Look.", "zoom_in", {"box": [x0, y0, x1, y1]})
        return format_answer("Fix.", "refine", {"mask_id": r.choice(ep.candidates).id, "points": point,
                                                 "labels": [r.randint(0, 1)]})


class ConstantBoxPolicy(Policy):
    """`segment` the same box (pixels of the image) whatever the query, then submit that candidate."""

    name = "constant-box"

    def __init__(self, box: Sequence[int]) -> None:
        self.box = [int(v) for v in box]

    def act(self, episodes: Sequence[Episode]) -> list[str]:
        out = []
        for ep in episodes:
            if ep.candidates:
                out.append(format_answer("Done.", "submit", {"mask_ids": [ep.candidates[0].id]}))
            else:
                view = ep.views[0]
                out.append(format_answer("Box it.", "segment",
                                         {"box": ep.to_frame_box(view, view.box_from_image(self.box)), "view": 0}))
        return out


def _tasks(samples) -> list[EpisodeTask]:
    """Episode tasks of shapes samples, with their ground truth."""
    return [EpisodeTask(s.scene.image, s.query, s.sample_id, GroundTruth(s.mask)) for s in samples]


def best_blind_box(segmenter, n: int, step: int = 28, side: int = 112) -> tuple[list[int], float]:
    """The grid box with the highest mean IoU on `val` samples 0..n-1, and that mean."""
    samples = [generate("val", i) for i in range(n)]
    tasks = _tasks(samples)
    edges = range(0, side + 1, step)
    boxes = [[x0, y0, x1, y1] for x0 in edges for x1 in edges if x1 > x0 for y0 in edges for y1 in edges if y1 > y0]
    scored = []
    for box in boxes:
        trajs = run_episodes(ConstantBoxPolicy(box), segmenter, tasks, EpisodeConfig(max_turns=2), progress=False)
        scored.append((float(np.mean([t.metrics["iou"] for t in trajs])), box))
    mean, box = max(scored)
    return box, mean


def _ci(values) -> dict:
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": round(float(v.mean()), 4), "ci95": [round(float(v.mean() - half), 4), round(float(v.mean() + half), 4)],
            "n": int(len(v))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--split", default="test")
    parser.add_argument("--segmenter", default="grabcut")
    parser.add_argument("--out", default=None)
    parser.add_argument("--blind-val", type=int, default=100,
                        help="val samples that choose the query-blind box (0: leave that setting out)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    samples = [generate(args.split, i) for i in range(args.n)]
    tasks = _tasks(samples)
    kinds = [s.kind for s in samples]
    print(f"{args.n} {args.split} samples generated in {time.perf_counter() - t0:.1f} s", flush=True)
    segmenter = make_segmenter(args.segmenter)
    results = {}
    box_ious = []
    for s in samples:
        guess = np.zeros_like(s.mask)
        for part in _parts(s.mask, 7):
            x0, y0, x1, y1 = (int(round(v)) for v in mask_box(part))
            guess[y0:y1, x0:x1] = True
        box_ious.append(iou(guess, GroundTruth(s.mask)))
    results["box as mask (no segmenter)"] = {"iou": box_ious, "turns": [0] * len(samples), "seconds": 0.0}
    settings = [("box-only (GT box per part, then submit)", BoxOnlyPolicy(), 8),
                ("oracle expert, 2 turns", OraclePolicy(OracleConfig()), 2),
                ("oracle expert, 4 turns", OraclePolicy(OracleConfig()), 4),
                ("oracle expert, 8 turns", OraclePolicy(OracleConfig()), 8),
                ("random calls, 8 turns", RandomCallPolicy(0), 8)]
    blind = None
    if args.blind_val > 0:
        t = time.perf_counter()
        box, val_mean = best_blind_box(segmenter, args.blind_val)
        blind = {"box": box, "val_samples": args.blind_val, "val_mIoU": round(val_mean, 4)}
        print(f"query-blind box {box}: val mIoU {val_mean:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        settings.append((BLIND, ConstantBoxPolicy(box), 8))
    for label, policy, turns in settings:
        t = time.perf_counter()
        trajs = run_episodes(policy, segmenter, tasks, EpisodeConfig(max_turns=turns), progress=False)
        seconds = time.perf_counter() - t
        results[label] = {"iou": [tr.metrics["iou"] for tr in trajs], "turns": [len(tr.turns) for tr in trajs],
                          "seconds": seconds}
        print(f"{label}: mIoU {np.mean(results[label]['iou']):.4f} ({seconds:.0f} s)", flush=True)
    table = {}
    for label, r in results.items():
        ious = np.asarray(r["iou"])
        table[label] = {"all": _ci(ious), "turns": round(float(np.mean(r["turns"])), 2),
                        "s_per_episode": round(r["seconds"] / len(samples), 3),
                        "by_kind": {k: _ci(ious[[i for i, kk in enumerate(kinds) if kk == k]])
                                    for k in QUERY_KINDS if k in kinds}}
    report = {"command": "bench/shapes_oracle.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
              "segmenter": segmenter.identifier, "kinds": {k: kinds.count(k) for k in QUERY_KINDS},
              "wall_seconds": round(time.perf_counter() - t0, 1), "settings": table, "blind_box": blind}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
