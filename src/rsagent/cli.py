"""Command line: a thin layer over the library. Errors a user can fix print one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from rsagent.core.errors import RsagentError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsagent", description="Multi-turn text-guided segmentation agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment a query in one image")
    seg.add_argument("image", help="image file")
    seg.add_argument("query", help="what to segment, in words")
    seg.add_argument("--policy", default="oracle", choices=["oracle"], help="who decides the tool calls")
    seg.add_argument("--gt-mask", help="ground-truth mask PNG (non-zero = target): required by the oracle, "
                     "and reported as IoU otherwise")
    seg.add_argument("--segmenter", default="grabcut", choices=["grabcut", "sam2"])
    seg.add_argument("--sam2-model", default="facebook/sam2.1-hiera-large", help="hub id or local directory")
    seg.add_argument("--device", default=None, help="torch device for sam2 (default: cuda if available)")
    seg.add_argument("--max-turns", type=int, default=8)
    seg.add_argument("--box-jitter", type=float, default=0.0,
                     help="oracle: std of each box edge's noise, as a fraction of the box size (default 0)")
    seg.add_argument("--seed", type=int, default=0, help="oracle wording and box jitter")
    seg.add_argument("--out", default="out", help="output directory (default: ./out)")
    return parser


def _segment(args: argparse.Namespace) -> int:
    from rsagent.api import segment_image
    from rsagent.policies.oracle import OracleConfig, OraclePolicy
    from rsagent.segmenters import make_segmenter

    if args.max_turns < 1:
        raise RsagentError(f"--max-turns must be at least 1, got {args.max_turns}")
    if args.policy == "oracle" and not args.gt_mask:
        raise RsagentError("--policy oracle reads the ground truth: pass --gt-mask MASK.png")
    seg_kwargs = {"model": args.sam2_model, "device": args.device} if args.segmenter == "sam2" else {}
    segmenter = make_segmenter(args.segmenter, **seg_kwargs)
    if not 0.0 <= args.box_jitter <= 1.0:
        raise RsagentError(f"--box-jitter must be between 0 and 1, got {args.box_jitter}")
    policy = OraclePolicy(OracleConfig(seed=args.seed, box_jitter=args.box_jitter))
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
