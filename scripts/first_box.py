"""Does an agent's first box go to the queried shape? Read from `rsagent eval` folders on shapes.

    .venv/bin/python scripts/first_box.py EVAL_DIR [EVAL_DIR ...] [--baseline DIR] [--out FILE.json]

For every sample with a target, the agent's first box is the box of its first executed call that has
one (`segment` or `zoom_in`, drawn on the full view 0). It *picks the queried shape* when, among the
scene's shapes (the scene graph beside the dataset's manifest), the one whose visible box it overlaps
most (box IoU) is a target. Also counted: samples with no such box (absent answers, invalid calls) and
how many distinct first boxes the agent drew, the most common first. A query-blind agent draws the
same few boxes whatever was asked; an agent that grounds the query picks the queried shape far more
often than a random shape would (about a quarter of the time on these scenes).

Beside it, the run's gIoU by query kind and on present and absent targets apart (95% bootstrap
intervals): an agent that answers every query "absent" scores 1 on the absent ones, so the overall gIoU
can hide how well the present targets are segmented. `--baseline DIR` adds the paired difference against
another eval folder of the same scenes, present and absent targets apart (`rsagent compare`'s bootstrap).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rsagent.core.mask import box_iou
from rsagent.data.shapes import parse_split
from rsagent.eval.metrics import aggregate, get_protocol, paired_difference
from rsagent.eval.results import read_results, safe_name

LISA = get_protocol("lisa")


def first_box(traj: dict) -> list[float] | None:
    """The first executed call's box on view 0, in image pixels (None when no such call came first)."""
    view0 = traj["views"][0]
    (vx0, vy0, vx1, vy1), (w, h) = view0["box"], view0["size"]
    for turn in traj["turns"]:
        call = turn["tool_call"]
        if turn["error"] is not None or call is None or "box" not in call["arguments"]:
            continue
        if call["arguments"].get("view", 0) != 0:
            return None
        x0, y0, x1, y1 = call["arguments"]["box"]
        sx, sy = (vx1 - vx0) / w, (vy1 - vy0) / h
        return [vx0 + x0 * sx, vy0 + y0 * sy, vx0 + x1 * sx, vy0 + y1 * sy]
    return None


def read_manifest(folder: Path) -> tuple[Path, str, dict[str, dict]]:
    """The shapes split an eval folder ran on: (dataset root, split name, manifest rows by sample id)."""
    config = json.loads((folder / "run.json").read_text())["config"]["dataset"]
    root = Path(config["root"])
    split = parse_split(config["split"])[0]
    manifest = {}
    for line in (root / split / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        manifest[row["sample_id"]] = row
    return root, split, manifest


def by_target(records: list[dict], manifest: dict[str, dict]) -> dict[str, list[dict]]:
    """The records of samples with a target and of those without (absent queries)."""
    split: dict[str, list[dict]] = {"present_targets": [], "absent_targets": []}
    for r in records:
        split["present_targets" if manifest[r["sample_id"]]["targets"] else "absent_targets"].append(r)
    return split


def scores(records: list[dict]) -> dict:
    """gIoU under LISA's protocol with its 95% bootstrap interval."""
    summary = aggregate(records, LISA)
    return {"n": summary["n"], "gIoU": summary["gIoU"], "ci95": summary["ci95"]["gIoU"]}


def analyse(folder: Path) -> dict:
    root, split, manifest = read_manifest(folder)
    present = picked = boxed = 0
    firsts: Counter = Counter()
    records = read_results(folder / "results.jsonl")
    by_kind: dict[str, list[dict]] = {}
    picked_by_kind: Counter = Counter()
    for record in records:
        sid = record["sample_id"]
        row = manifest[sid]
        by_kind.setdefault(row["kind"], []).append(record)
        traj = json.loads((folder / "trajectories" / f"{safe_name(sid)}.json").read_text())
        box = first_box(traj)
        if box is not None:
            firsts[tuple(round(v) for v in box)] += 1
        if not row["targets"]:
            continue
        present += 1
        if box is None:
            continue
        boxed += 1
        shapes = json.loads((root / split / row["scene"]).read_text())["shapes"]
        overlaps = [box_iou(box, s["box"]) for s in shapes]
        best = max(range(len(shapes)), key=overlaps.__getitem__)
        hit = overlaps[best] > 0 and shapes[best]["id"] in row["targets"]
        picked += hit
        picked_by_kind[row["kind"]] += hit
    kinds = {kind: {**scores(rows), "picked": picked_by_kind[kind]} for kind, rows in sorted(by_kind.items())}
    return {"folder": str(folder), "present": present, "boxed": boxed, "picked": picked,
            "picked_share": picked / boxed if boxed else None, "distinct_first_boxes": len(firsts),
            "most_common": [[list(b), n] for b, n in firsts.most_common(3)],
            "all": scores(records), **{name: scores(rows) for name, rows in by_target(records, manifest).items()},
            "kinds": kinds}


def against(baseline: Path, folder: Path) -> dict:
    """Paired gIoU difference folder − baseline, on present and on absent targets apart."""
    _, _, manifest = read_manifest(folder)
    base = by_target(read_results(baseline / "results.jsonl"), manifest)
    run = by_target(read_results(folder / "results.jsonl"), manifest)
    out = {"baseline": str(baseline)}
    for name, keep in base.items():
        mine = run[name]
        if len(keep) >= 2:
            diff = paired_difference(keep, mine, LISA)["gIoU"]
            out[name] = {"n": len(keep), "diff": diff["diff"], "ci95": diff["ci95"]}
    return out


def _interval(score: dict) -> str:
    low, high = score["ci95"] or (float("nan"), float("nan"))
    return f"{score['gIoU']:.3f} [{low:.3f}, {high:.3f}] (n={score['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="an eval folder of the same scenes: paired differences against it")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args()
    rows = [analyse(f) for f in args.folders]
    for r in rows:
        share = "-" if r["picked_share"] is None else f"{r['picked_share']:.3f}"
        print(f"{r['folder']}: first box picks the queried shape {r['picked']} of {r['boxed']} ({share}); "
              f"{r['present'] - r['boxed']} of {r['present']} targets without a first box; "
              f"{r['distinct_first_boxes']} distinct first boxes, most common {r['most_common'][:1]}")
        print(f"  gIoU {_interval(r['all'])}; present targets {_interval(r['present_targets'])}; "
              f"absent targets {_interval(r['absent_targets'])}")
        print("  by kind: " + "; ".join(f"{kind} {k['gIoU']:.3f} (picked {k['picked']} of {k['n']})"
                                        for kind, k in r["kinds"].items()))
        if args.baseline:
            r["against"] = against(args.baseline, Path(r["folder"]))
            print(f"  minus {args.baseline}: " + "; ".join(
                f"{name.replace('_', ' ')} {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (n={d['n']})"
                for name, d in r["against"].items() if name != "baseline"))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
