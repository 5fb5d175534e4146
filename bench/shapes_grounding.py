"""Single-turn grounding on shapes: train the tiny Qwen2.5-VL from scratch to box the queried shape.

    .venv/bin/python bench/shapes_grounding.py --steps 2000 --out runs/grounding [--model DIR] [--eval 600]

The flags of the measured runs (docs/shapes.md) over `rsagent train ground` (`rsagent.train.ground`, where
the code lives now: the same training, step for step, bit for bit): the task is the agent's first move
alone, the user turn (query first, then the 112 px scene, exactly as an episode's first prompt under the
project's chat template) answered with one `segment` call holding the target's box. Training scenes are
`train` seeds, with one query per nameable shape ("the red circle", "the small blue star", "the cross"); a
curriculum starts with one shape per scene, then 2-4. Evaluation is on `test` seeds never trained on: greedy
answers, box IoU with the target's visible box, and the picked-right rate (the shape whose box the answer
overlaps most is the target), against two baselines computed exactly on the same samples: a random shape,
and a random shape of the queried colour. Writes `OUT/log.jsonl`, `OUT/result.json` and the trained model
folder `OUT/model` (loads with --policy qwen --model OUT/model), and checkpoints `OUT/checkpoint-N` every
250 steps (`--resume` continues the newest).

`--answer episode` trains the same task in the episode's own words instead: the prompt is a real
episode's first prompt (system prompt with the tools, then the user turn) and the answer is the oracle
expert's first turn (its reasoning, then the call), exactly what a synthesized trajectory starts with.
It bridges a model grounded on bare calls to the format SFT and RL use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.train import GroundConfig, train_ground
from rsagent.train.ground_aux import AttendTarget, MatchHead  # noqa: F401 (the bench's names, kept for its users)
from rsagent.train.ground_data import (  # noqa: F401
    answer,
    as_episode,
    batch_inputs,
    dataset_items,
    eval_items,
    messages,
    scene_items,
    token_cover,
)
from rsagent.train.ground_eval import evaluate  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="start from this folder (default: a fresh random model)")
    parser.add_argument("--steps", type=int, default=2000, help="training budget in optimiser steps (of --batch samples)")
    parser.add_argument("--minutes", type=float, default=30.0, help="stop early at this wall-clock time")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many steps of the --steps schedule (a run cut by --minutes, replayed "
                             "step for step on any machine)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--curriculum", default="0.1,0.3",
                        help="shares of the budget ending the one-shape and the 2-4 shape stages (then 2-8 shapes)")
    parser.add_argument("--eval", type=int, default=600, help="held-out test samples")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=250,
                        help="steps between quick checks on the first 200 held-out queries (0: none)")
    parser.add_argument("--colour-first", type=float, default=0.0,
                        help="share of the budget trained on colour-only queries (\"the red shape\"): the comparison "
                             "the visual tokens carry best (colour is 0.85 readable after perception pretraining) first")
    parser.add_argument("--match-aux", type=float, default=1.0,
                        help="weight of the auxiliary per-visual-token target loss (MatchHead; 0: none)")
    parser.add_argument("--match-layer", type=int, default=2, help="the hidden state MatchHead reads (layers run)")
    parser.add_argument("--attend-aux", type=float, default=0.0,
                        help="weight of the auxiliary loss that puts one attention head's weight, where the box is "
                             "written, on the queried shape's visual tokens (AttendTarget; 0: none)")
    parser.add_argument("--attend-layer", type=int, default=-1, help="the language model layer AttendTarget supervises")
    parser.add_argument("--answer", choices=("call", "episode"), default="call",
                        help="call: the bare segment call after the user turn; episode: a real episode's first "
                             "prompt (system prompt and tools included) answered with the oracle's first turn")
    parser.add_argument("--queries", choices=("attribute", "mix"), default="attribute",
                        help="attribute: every single-target attribute query of each scene (\"the red circle\"); mix: "
                             "the shapes dataset's own train samples, every query kind of its mix (episode answers only; "
                             "its scenes hold 2-8 shapes, so --curriculum must be 0,0)")
    parser.add_argument("--freeze-vision-blocks", action="store_true",
                        help="train the vision tower's merger only, keeping the pretrained patch blocks (as LLaVA's "
                             "first stage keeps its encoder): the random language model's early gradients cannot wash "
                             "out what perception pretraining taught")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads spin and run slower)")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue the run in --out from its newest checkpoint (the same settings)")
    args = parser.parse_args()
    config = GroundConfig(
        model=args.model, out=args.out, steps=args.steps, stop_after=args.stop_after, minutes=args.minutes,
        batch=args.batch, lr=args.lr, curriculum=args.curriculum, queries=args.queries, answer=args.answer,
        colour_first=args.colour_first, size=args.size, seed=args.seed,
        freeze_vision="blocks" if args.freeze_vision_blocks else False, match_aux=args.match_aux,
        match_layer=args.match_layer, attend_aux=args.attend_aux, attend_layer=args.attend_layer, eval_n=args.eval,
        eval_every=args.eval_every, threads=args.threads, device="cpu", resume=bool(args.resume))
    try:
        config.check()
    except RsagentError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    try:
        result = train_ground(config, model_dir=out / "model")
    except RsagentError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    result.pop("out")
    result = {"command": "bench/shapes_grounding.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                 if v is not None), **result}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
