"""Command line: a thin layer over the library. Errors a user can fix print one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from rsagent.cli_options import add_policy_args, add_segmenter_args, build_policy, build_segmenter
from rsagent.core.errors import RsagentError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsagent", description="Multi-turn text-guided segmentation agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment a query in one image")
    seg.add_argument("image", help="image file")
    seg.add_argument("query", help="what to segment, in words")
    seg.add_argument("--gt-mask", help="ground-truth mask PNG (non-zero = target): required by the oracle, "
                     "and reported as IoU otherwise")
    add_policy_args(seg)
    add_segmenter_args(seg)
    seg.add_argument("--out", default="out", help="output directory (default: ./out)")
    return parser


def _segment(args: argparse.Namespace) -> int:
    from rsagent.api import segment_image

    if args.policy == "oracle" and not args.gt_mask:
        raise RsagentError("--policy oracle reads the ground truth: pass --gt-mask MASK.png")
    policy = build_policy(args)
    segmenter = build_segmenter(args)
    result = segment_image(args.image, args.query, policy, segmenter, gt_mask_path=args.gt_mask,
                           max_turns=args.max_turns, out_dir=args.out)
    traj = result.trajectory
    parts = [f"turns={len(traj.turns)}", f"end={traj.final['reason']}"]
    if result.iou is not None:
        parts.append(f"iou={result.iou:.4f}")
    parts += [f"seconds={traj.timings['total']:.2f}", f"out={result.out_dir}"]
    print(" ".join(parts))
    if traj.final["reason"] == "failed":
        print(f"rsagent: episode failed: {traj.final['error']}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "segment":
            return _segment(args)
    except RsagentError as exc:
        print(f"rsagent: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
