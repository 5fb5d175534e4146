"""Ship a trained shapes checkpoint as the packaged demo agent (src/rsagent/agents/shapes_demo/).

    .venv/bin/python scripts/ship_demo_agent.py runs/rl/ --test-giou 0.253 \
        --evaluation "rsagent eval --dataset shapes --split test:100 ... (fp32 0.253, bf16 0.253)"

Measure the gIoU of both storage dtypes first (ship to --out somewhere else, eval with --policy qwen
--model THERE) and keep bf16 only when it scores the same within noise.
"""

from __future__ import annotations

import argparse

from rsagent.policies.demo_agent import AGENT_DIR
from rsagent.train.ship import ship_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="a `rsagent train sft|rl` output folder")
    parser.add_argument("--out", default=str(AGENT_DIR), help="destination (default: the packaged agent folder)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="weights on disk")
    parser.add_argument("--test-giou", type=float, default=None, help="its measured test gIoU, recorded in agent.json")
    parser.add_argument("--evaluation", default=None, help="how that gIoU was measured, recorded in agent.json")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="per answer, as trained (default 200)")
    parser.add_argument("--max-turns", type=int, default=8, help="turn budget, as trained (default 8)")
    args = parser.parse_args()
    out = ship_agent(args.src, args.out, dtype=args.dtype, test_giou=args.test_giou, evaluation=args.evaluation,
                     max_new_tokens=args.max_new_tokens, max_turns=args.max_turns)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"shipped {args.src} ({args.dtype}) to {out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
