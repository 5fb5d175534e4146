"""Command line: a thin layer over the library. Errors a user can fix print one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from rsagent.cli_options import add_policy_args, add_segmenter_args, build_policy, build_segmenter, segmenter_kwargs
from rsagent.core.errors import RsagentError

# Options that say how or where a run executes, not what it computes: left out of the recorded
# configuration that --resume checks (dataset and protocol options are recorded on their own).
_NOT_SETTINGS = {"command", "out", "resume", "workers", "executor", "ray_address", "gpus_per_worker", "gallery",
                 "no_progress", "dataset", "root", "split", "annotations", "queries", "limit", "protocol",
                 "batch_size", "predictions"}


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
    _add_demo_parser(sub)

    ev = sub.add_parser("eval", help="run a policy and a segmenter on every sample of a dataset and score them")
    _add_run_args(ev)
    group = ev.add_argument_group("execution")
    group.add_argument("--workers", type=int, default=1, help="parallel workers (processes or Ray actors), each "
                       "holding one policy and one segmenter (default 1: in-process)")
    group.add_argument("--executor", default="local", choices=("local", "ray"),
                       help="local processes, or Ray actors (pip install rsagent[dist])")
    group.add_argument("--batch-size", type=int, default=8, help="episodes advanced in lock-step per policy call (default 8)")
    group.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    group.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray actor reserves (default 0)")
    add_policy_args(ev)
    add_segmenter_args(ev)

    sc = sub.add_parser("score", help="score prediction masks made by any method: PRED/<sample_id>.png")
    _add_run_args(sc)
    sc.add_argument("--predictions", required=True, metavar="PRED",
                    help="folder of <sample_id>.png masks (non-zero = foreground, the image's size)")
    cmp = sub.add_parser("compare", help="B minus A on the same samples: paired gIoU / cIoU differences with "
                         "95%% bootstrap intervals, from two `rsagent eval` or `score` folders")
    cmp.add_argument("a", metavar="A", help="an eval/score output folder (results.jsonl, summary.json): the baseline")
    cmp.add_argument("b", metavar="B", help="the folder compared with it")
    cmp.add_argument("--resamples", type=int, default=2000)
    cmp.add_argument("--out", default=None, metavar="FILE.json", help="also write the comparison as JSON")
    _add_synth_parser(sub)
    _add_shapes_parser(sub)
    _add_train_parser(sub)
    _add_serve_parser(sub)
    return parser


def _add_serve_parser(sub) -> None:
    from rsagent.web.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB  # no gradio: only `serve` needs it

    srv = sub.add_parser("serve", help="a web app (Gradio): segment an image turn by turn, browse eval and synth "
                         "folders (pip install rsagent[web]; docs/web.md)")
    group = srv.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    group.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    group.add_argument("--browse", action="append", default=[], metavar="DIR",
                       help="a folder whose eval and synth runs the Browse tab may open (repeatable); nothing "
                       "outside these folders is read")
    group.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                       help="largest upload, in MB (default %(default)g)")
    group.add_argument("--max-upload-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help="largest image (uploaded or browsed), in pixels (default %(default)d)")
    add_policy_args(srv)
    add_segmenter_args(srv)
    srv.set_defaults(policy="demo")  # the shipped trained agent (the oracle needs a ground truth)


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise RsagentError("rsagent serve needs the web extra: pip install 'rsagent[web]'")
    from rsagent.web.app import serve

    return serve(args)


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rsagent.eval.compare import compare_runs

    result = compare_runs(args.a, args.b, resamples=args.resamples)
    g, c, n = result["gIoU"], result["cIoU"], result["samples"]
    print(f"n={result['n']} gIoU {g['a']:.4f} -> {g['b']:.4f} diff {g['diff']:+.4f} [{g['ci95'][0]:+.4f}, "
          f"{g['ci95'][1]:+.4f}]  cIoU {c['a']:.4f} -> {c['b']:.4f} diff {c['diff']:+.4f} [{c['ci95'][0]:+.4f}, "
          f"{c['ci95'][1]:+.4f}]  B higher/lower/same: {n['b_higher']}/{n['b_lower']}/{n['same']}")
    if args.out:
        from rsagent.core.files import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


def _add_synth_parser(sub) -> None:
    from rsagent.synth.expert import DEFAULT_MIX

    syn = sub.add_parser("synth", help="synthesize expert trajectories (queries, recovery from mistakes, filters) "
                         "and export them for SFT (TRL, LLaMA-Factory) and RL")
    group = syn.add_argument_group("source")
    _add_dataset_args(group)
    group.add_argument("--out", required=True, help="output folder: results, trajectories, images, exports, stats")
    group.add_argument("--num", type=int, default=None, help="items (image, query, opening) to run (default: all)")
    group.add_argument("--seed", type=int, default=0, help="queries, openings and wording (default 0)")
    group.add_argument("--resume", action="store_true", help="finish the run already in --out")
    group.add_argument("--gallery", type=int, default=24, help="accepted trajectories pictured in stats.html (default 24)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = syn.add_argument_group("episodes and filters")
    group.add_argument("--max-turns", type=int, default=8, help="turn budget per episode (default 8)")
    group.add_argument("--frame", default="qwen2.5-vl", choices=("qwen2.5-vl", "norm1000", "pixels"),
                       help="coordinates and image sizes of the policy to train (default qwen2.5-vl)")
    group.add_argument("--max-pixels", type=int, default=None,
                       help="qwen2.5-vl: pixels per image shown (default 1003520); use the value you will train with")
    group.add_argument("--min-iou", type=float, default=None,
                       help="keep trajectories whose final IoU reaches this (default: grabcut 0.7, sam2 0.85)")
    group.add_argument("--openings", default=",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()),
                       help="mix of first moves, kind=weight,... (default %(default)s)")
    group.add_argument("--absent-rate", type=float, default=None, help="share of 'absent' queries (default 0.05)")
    group.add_argument("--per-target", type=int, default=None, help="queries written per target instance (default 2)")
    group.add_argument("--variants", type=int, default=1,
                       help="trajectories per query, each opening with a move of another kind (default 1)")
    group.add_argument("--mistake-loss", action="store_true",
                       help="train on the deliberately wrong openings too (no `\"loss\": false` marks in sft.jsonl; "
                            "the export before 2026-11-27 (e), which the shipped agent was trained on)")
    group = syn.add_argument_group("teacher (any OpenAI-compatible server)")
    group.add_argument("--teacher-base-url", default=None, help="e.g. http://localhost:8000/v1")
    group.add_argument("--teacher-model", default=None, help="the model name the server serves")
    group.add_argument("--teacher-api-key-env", default="OPENAI_API_KEY", help="variable holding the key")
    group.add_argument("--teacher-queries", type=int, default=0,
                       help="queries per image the teacher writes (instance sources; default 0)")
    group.add_argument("--rewrite", action="store_true", help="the teacher rewrites each turn's reasoning")
    group = syn.add_argument_group("execution")
    group.add_argument("--workers", type=int, default=1, help="parallel worker processes or Ray actors (default 1)")
    group.add_argument("--executor", default="local", choices=("local", "ray"))
    group.add_argument("--batch-size", type=int, default=8, help="episodes per chunk (default 8)")
    group.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    add_segmenter_args(syn)


def _add_dataset_args(group) -> None:
    from rsagent.data import DATASETS

    group.add_argument("--dataset", required=True, choices=DATASETS)
    group.add_argument("--root", default=None, help="dataset root (manifest: the JSONL file or its folder; "
                       "shapes: where splits are generated, default ~/.cache/rsagent/shapes)")
    group.add_argument("--split", default=None, help="split (default: the dataset's own; manifest: every line)")
    group.add_argument("--annotations", default=None, help="coco: instances json (default: under --root)")
    group.add_argument("--queries", default=None, help="coco: queries JSONL (default: under --root)")


def _add_shapes_parser(sub) -> None:
    shp = sub.add_parser("shapes", help="the procedural shapes domain: write a split, build the CPU-sized model")
    actions = shp.add_subparsers(dest="action", required=True)
    make = actions.add_parser("make", help="write a split in the manifest layout (images, masks, scenes, manifest.jsonl)")
    make.add_argument("--split", default="test", help="train, val, test or test-novel (default test)")
    make.add_argument("--n", type=int, default=None, help="samples 0..N-1 of the split (default: the split's size)")
    make.add_argument("--size", type=int, default=112, help="pixels a side, 112..224 (default 112)")
    make.add_argument("--out", required=True, help="folder to write")
    model = actions.add_parser("model", help="a random tiny Qwen2.5-VL with a tokenizer trained on the domain's text")
    model.add_argument("--out", required=True, help="folder to write (loads with --policy qwen --model DIR)")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--vision-steps", type=int, default=0,
                       help="then pretrain the vision tower on scene-graph labels for N steps of 32 scenes "
                            "(rsagent.shapes_vision; about 0.4 s a step on one core; default 0: random weights)")
    model.add_argument("--vision-workers", type=int, default=1,
                       help="processes drawing the pretraining scenes ahead of the tower (default 1; 0: none, the "
                            "same batches drawn in the training process; more on machines with cores to spare)")
    model.add_argument("--aligned", action="store_true",
                       help="score the vision labels against the model's own colour and kind word embeddings")
    model.add_argument("--merge", type=int, choices=(1, 2, 4), default=2,
                       help="patches a side merged into one visual token: 2 (Qwen2.5-VL's; a 112 px scene is 16 "
                            "tokens) or 1 (64 tokens of 14 px); 4 with --patch 7 (16 tokens of 28 px)")
    model.add_argument("--patch", type=int, choices=(7, 14), default=14,
                       help="pixels a side of the vision tower's patches: 14 (Qwen2.5-VL's) or 7 (four times the "
                            "patches for the same tokens with --merge 4; docs/shapes.md, 2026-11-28 (m))")
    model.add_argument("--text-layers", type=int, default=4, metavar="N",
                       help="decoder layers of the language model (default 4)")
    model.add_argument("--rescale-visual", action="store_true",
                       help="after vision pretraining, shrink the visual tokens to the length of word embeddings")
    model.add_argument("--device", default=None, choices=("cpu", "cuda"),
                       help="where the vision tower pretrains (default: cuda when available)")
    model.add_argument("--resume", action="store_true",
                       help="continue the vision pretraining saved in OUT/vision-checkpoint (every 250 steps) by a "
                            "run that stopped; the same flags give the model an uninterrupted run gives")


def _add_train_parser(sub) -> None:
    trn = sub.add_parser("train", help="train the qwen policy: grounding (shapes), SFT on synthesized trajectories, "
                         "then RL")
    stages = trn.add_subparsers(dest="stage", required=True)
    # every option defaults to None: only the flags given override the --config file (then the config's defaults)
    _add_ground_parser(stages)
    sft = stages.add_parser("sft", help="cold-start SFT on a `rsagent synth` export (TRL SFTTrainer; docs/training.md)")
    group = _train_run_options(sft, "configs/sft_*.yaml")
    group.add_argument("--data", default=None, help="a `rsagent synth` output folder (sft.jsonl, images/, run.json)")
    group = sft.add_argument_group("optimisation")
    group.add_argument("--max-steps", dest="max_steps", type=int, default=None, metavar="N",
                       help="optimizer steps (overrides --epochs)")
    group.add_argument("--epochs", type=float, default=None)
    group.add_argument("--batch-size", dest="per_device_batch", type=int, default=None, metavar="N", help="rows per device per step")
    group.add_argument("--grad-accum", dest="grad_accum", type=int, default=None, metavar="N")
    _train_weight_options(group)
    group.add_argument("--logging-steps", dest="logging_steps", type=int, default=None, metavar="N")
    group.add_argument("--save-steps", dest="save_steps", type=int, default=None, metavar="N")
    group = _train_eval_options(sft)
    group.add_argument("--eval-max-turns", dest="eval_max_turns", type=int, default=None, metavar="N",
                       help="default: the export's turn budget")

    rl = stages.add_parser("rl", help="agentic RL: GRPO on whole episodes against final, process and format "
                                      "rewards (docs/training.md)")
    group = _train_run_options(rl, "configs/rl_*.yaml")
    group.add_argument("--prompts", default=None, metavar="FILE_OR_DATASET",
                       help="a manifest file (a `rsagent synth` rl_prompts.jsonl is one) or a dataset name (shapes, ...)")
    group.add_argument("--prompts-root", dest="prompts_root", default=None, metavar="PATH",
                       help="the dataset's folder (shapes: its default folder)")
    group.add_argument("--prompts-split", dest="prompts_split", default=None, metavar="SPLIT")
    group.add_argument("--exclude-kinds", dest="exclude_kinds", nargs="*", default=None, metavar="KIND",
                       help="drop prompts of these kinds (the loader's `kind`, e.g. shapes' absent); given "
                            "alone, none (every kind, whatever the config says)")
    group.add_argument("--segmenter", default=None, help="the tool the episodes call (default grabcut)")
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None)
    group = rl.add_argument_group("optimisation")
    group.add_argument("--max-steps", dest="max_steps", type=int, default=None, metavar="N")
    group.add_argument("--prompts-per-step", dest="prompts_per_step", type=int, default=None, metavar="N")
    group.add_argument("--group-size", dest="group_size", type=int, default=None, metavar="G",
                       help="sampled episodes per prompt")
    group.add_argument("--temperature", type=float, default=None)
    group.add_argument("--max-turns", dest="max_turns", type=int, default=None, metavar="N")
    group.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None, metavar="N")
    group.add_argument("--kl-coef", dest="kl_coef", type=float, default=None)
    group.add_argument("--reward-final", dest="reward_final", type=float, default=None, metavar="W")
    group.add_argument("--reward-process", dest="reward_process", type=float, default=None, metavar="W")
    group.add_argument("--reward-format", dest="reward_format", type=float, default=None, metavar="W")
    group.add_argument("--invalid-cost", dest="invalid_cost", type=float, default=None, metavar="C",
                       help="process reward: cost of each rejected call")
    group.add_argument("--noop-cost", dest="noop_cost", type=float, default=None, metavar="C",
                       help="process reward: cost of each call that changes nothing")
    _train_weight_options(group)
    group.add_argument("--save-steps", dest="save_steps", type=int, default=None, metavar="N")
    group.add_argument("--gallery-steps", dest="gallery_steps", type=int, default=None, metavar="N",
                       help="write OUT/gallery/step-N.html every N steps (0: never)")
    group = _train_eval_options(rl)
    group.add_argument(
        "--eval-sampled", dest="eval_sampled", action=argparse.BooleanOptionalAction, default=None,
        help="also play the held-out samples at the training temperature (eval_sampled_*: the reward GRPO optimises)")
    group.add_argument(
        "--keep-best", dest="keep_best", action=argparse.BooleanOptionalAction, default=None,
        help="final weights: the saved checkpoint with the best held-out greedy gIoU, not the last step's "
             "(OUT/final_weights.json says which); with --resume on a finished run, it chooses again")


def _add_ground_parser(stages) -> None:
    gr = stages.add_parser("ground", help="grounding on shapes: single first turns answered with the target's box "
                                          "(a bare segment call, or the oracle's first turn), before SFT (docs/shapes.md)",
                           description="--model: a `rsagent shapes model` folder (left out: a fresh random shapes "
                                       "model of --seed). The final model goes into --out (--policy qwen --model OUT).")
    group = _train_run_options(gr, "configs/ground_*.yaml")
    group.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default 1)")
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None)
    group = gr.add_argument_group("what is trained on")
    group.add_argument("--answer", default=None, choices=("call", "episode", "inventory"),
                       help="call: the bare segment call after the user turn; episode: a real episode's first prompt "
                            "answered with the oracle's first turn; inventory: every shape of the scene listed with "
                            "its box, then the bare call (default call)")
    group.add_argument("--queries", default=None, choices=("attribute", "mix"),
                       help="attribute: every single-target attribute query of each scene; mix: the shapes dataset's "
                            "own train samples (needs --answer episode --curriculum 0,0; default attribute)")
    group.add_argument("--curriculum", default=None, metavar="A,B",
                       help="shares of --steps ending the one-shape and the 2-4 shape stages (then 2-8; default 0.1,0.3)")
    group.add_argument("--colour-first", dest="colour_first", type=float, default=None, metavar="SHARE",
                       help="share of --steps trained on colour-only queries first (default 0)")
    group.add_argument("--size", type=int, default=None, help="scene pixels a side (default 112)")
    group = gr.add_argument_group("optimisation")
    group.add_argument("--steps", type=int, default=None, metavar="N",
                       help="the schedule's optimiser steps: the learning rate and the curriculum follow it")
    group.add_argument("--stop-after", dest="stop_after", type=int, default=None, metavar="N",
                       help="stop after N steps of the schedule (replays a run cut by --minutes step for step)")
    group.add_argument("--minutes", type=float, default=None, help="stop at this wall-clock time of training")
    group.add_argument("--batch", type=int, default=None, metavar="N", help="samples per step (default 32)")
    _train_weight_options(group, large=False)
    group.add_argument("--match-aux", dest="match_aux", type=float, default=None, metavar="W",
                       help="weight of the per-visual-token target loss (MatchHead; 0: none; default 1)")
    group.add_argument("--match-layer", dest="match_layer", type=int, default=None, metavar="L")
    group.add_argument("--attend-aux", dest="attend_aux", type=float, default=None, metavar="W",
                       help="weight of the loss putting one head's attention, where the box is written, on the "
                            "target's visual tokens (AttendTarget; default 0)")
    group.add_argument("--attend-layer", dest="attend_layer", type=int, default=None, metavar="L")
    group.add_argument("--log-steps", dest="log_steps", type=int, default=None, metavar="N")
    group.add_argument("--save-steps", dest="save_steps", type=int, default=None, metavar="N")
    group.add_argument("--save-total-limit", dest="save_total_limit", type=int, default=None, metavar="N")
    group = gr.add_argument_group("held-out test queries")
    group.add_argument("--eval-n", dest="eval_n", type=int, default=None, metavar="N",
                       help="queries scored at the end (default 600)")
    group.add_argument("--eval-every", dest="eval_every", type=int, default=None, metavar="N",
                       help="steps between quick checks on the first 200 of them (0: none; default 250)")


def _train_run_options(parser, configs: str):
    group = parser.add_argument_group("run")
    group.add_argument("--config", default=None, metavar="FILE", help=f"YAML file of settings ({configs})")
    group.add_argument("--model", default=None, help="hub id or local folder of a Qwen2.5-VL checkpoint")
    group.add_argument("--out", default=None, help="checkpoints, logs, evals and the final model (loads with "
                       "--policy qwen --model OUT)")
    group.add_argument("--resume", action="store_const", const=True, default=None,
                       help="continue from the newest OUT/checkpoint-*")
    group.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")
    group.add_argument("--seed", type=int, default=None)
    return group


def _train_weight_options(group, large: bool = True) -> None:
    """--lr and what trains; `large`: also LoRA and gradient checkpointing (not for the tiny shapes model)."""
    group.add_argument("--lr", type=float, default=None)
    if large:
        group.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                           help="LoRA on the language model (the final folder holds the merge; OUT/adapter the adapter)")
    group.add_argument("--freeze-vision", dest="freeze_vision", action=argparse.BooleanOptionalAction, default=None,
                       help="keep the vision tower's weights")
    group.add_argument("--freeze-vision-blocks", dest="freeze_vision", action="store_const", const="blocks",
                       help="keep the vision tower's patch embedding and blocks; its merger trains")
    if large:
        group.add_argument("--gradient-checkpointing", dest="gradient_checkpointing",
                           action=argparse.BooleanOptionalAction, default=None)


def _train_eval_options(parser):
    group = parser.add_argument_group("rollouts on held-out data during training")
    group.add_argument("--eval-dataset", dest="eval_dataset", default=None, metavar="NAME",
                       help="any dataset `rsagent eval` knows, e.g. shapes")
    group.add_argument("--eval-root", dest="eval_root", default=None, metavar="PATH")
    group.add_argument("--eval-split", dest="eval_split", default=None, metavar="SPLIT")
    group.add_argument("--eval-n", dest="eval_n", type=int, default=None, metavar="N", help="samples per evaluation")
    group.add_argument("--eval-steps", dest="eval_steps", type=int, default=None, metavar="N", help="evaluate every N steps (0: never)")
    group.add_argument("--eval-max-new-tokens", dest="eval_max_new_tokens", type=int, default=None, metavar="N")
    return group


def _train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    if args.stage == "ground":
        from rsagent.train import GroundConfig, load_ground_config, train_ground

        flags = {f.name: getattr(args, f.name) for f in fields(GroundConfig) if hasattr(args, f.name)}
        result = train_ground(load_ground_config(args.config, **flags))
        after = result["after"]
        print(f"steps={result['steps']} picked={after['picked']['mean']:.3f} iou={after['iou']['mean']:.3f} "
              f"samples={result['samples']} seconds={sum(result['seconds'].values()):.1f} out={result['out']}")
        return 0
    if args.stage == "rl":
        from rsagent.train import RLConfig, load_rl_config, train_rl

        flags = {f.name: getattr(args, f.name) for f in fields(RLConfig) if hasattr(args, f.name)}
        result = train_rl(load_rl_config(args.config, **flags))
        reward = "n/a" if result["reward"] is None else f"{result['reward']:.4f}"
        print(f"steps={result['steps']} final_weights=step-{result['final_step']} reward={reward} "
              f"prompts={result['prompts']} seconds={result['seconds']:.1f} out={result['out']}")
        return 0
    from rsagent.train import SFTConfig, load_sft_config, train_sft

    flags = {f.name: getattr(args, f.name) for f in fields(SFTConfig) if hasattr(args, f.name)}
    config = load_sft_config(args.config, **flags)
    result = train_sft(config)
    print(f"steps={result['steps']} loss={result['train_loss']:.4f} rows={result['rows']} "
          f"seconds={result['seconds']:.1f} out={result['out']}")
    return 0


def _shapes(args: argparse.Namespace) -> int:
    import dataclasses

    if args.action == "model":
        from rsagent.shapes_model import save_shapes_model

        if args.vision_steps < 0:
            raise RsagentError(f"--vision-steps must be 0 or more, got {args.vision_steps}")
        if args.rescale_visual and args.vision_steps == 0:
            raise RsagentError("--rescale-visual applies after vision pretraining: give --vision-steps N")
        if args.vision_workers < 0:
            raise RsagentError(f"--vision-workers must be 0 or more, got {args.vision_workers}")
        if args.text_layers < 1:
            raise RsagentError(f"--text-layers must be at least 1, got {args.text_layers}")
        info = save_shapes_model(args.out, args.seed, args.vision_steps, args.aligned, args.rescale_visual,
                                 merge=args.merge, text_layers=args.text_layers, patch=args.patch,
                                 vision_workers=args.vision_workers, resume=args.resume, device=args.device)
        print(f"parameters={info['parameters']} vocab={info['vocab']} out={args.out}")
        return 0
    from rsagent.data.shapes import ShapesConfig, parse_split, write_split

    if not 112 <= args.size <= 224:
        raise RsagentError(f"--size must be within 112..224, got {args.size}")
    name, start, n = parse_split(args.split if args.n is None else f"{args.split}:{args.n}")
    if start:
        raise RsagentError(f"shapes make writes samples 0..N-1 of a split (--split {name}:N); a range "
                           f"such as {args.split!r} is for --split in eval and synth, which list only its samples")
    config = ShapesConfig(scene=dataclasses.replace(ShapesConfig().scene, size=args.size))
    out = write_split(args.out, name, n, config)
    print(f"split={name} n={n} size={args.size} out={out}")
    return 0


def _default_root(args: argparse.Namespace) -> None:
    """--root may be left out for the procedural shapes dataset only."""
    if getattr(args, "dataset", None) is None or args.root is not None:
        return
    if args.dataset != "shapes":
        raise RsagentError(f"--dataset {args.dataset} needs --root PATH")
    from rsagent.data.shapes import DEFAULT_ROOT

    args.root = str(DEFAULT_ROOT)


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    from rsagent.eval.metrics import PROTOCOLS

    group = parser.add_argument_group("dataset and scoring")
    _add_dataset_args(group)
    group.add_argument("--limit", type=int, default=None, help="only the first N samples, in the loader's order")
    group.add_argument("--protocol", default="lisa", choices=tuple(PROTOCOLS),
                       help="scoring convention (default lisa; see docs/evaluation.md)")
    group.add_argument("--out", required=True, help="output folder: results.jsonl, summary.json, report.html")
    group.add_argument("--resume", action="store_true", help="finish the run already in --out")
    group.add_argument("--gallery", type=int, default=60, help="samples pictured in report.html (default 60)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _segment(args: argparse.Namespace) -> int:
    from rsagent.api import segment_image

    if args.policy == "oracle" and not args.gt_mask:
        raise RsagentError("--policy oracle reads the ground truth: pass --gt-mask MASK.png")
    policy = build_policy(args)
    segmenter = build_segmenter(args)
    result = segment_image(args.image, args.query, policy, segmenter, gt_mask_path=args.gt_mask,
                           max_turns=args.max_turns, out_dir=args.out)
    return _report_episode(result, result.trajectory.timings["total"])


def _report_episode(result, seconds: float, iou_na: bool = False) -> int:
    """The one result line of `segment` and `demo` (`iou_na`: say iou=n/a when there is no ground truth);
    exit status 1 when the episode failed."""
    traj = result.trajectory
    parts = [f"turns={len(traj.turns)}", f"end={traj.final['reason']}"]
    if result.iou is not None:
        parts.append(f"iou={result.iou:.4f}")
    elif iou_na:
        parts.append("iou=n/a")
    parts += [f"seconds={seconds:.2f}", f"out={result.out_dir}"]
    print(" ".join(parts))
    if traj.final["reason"] == "failed":
        print(f"rsagent: episode failed: {traj.final['error']}", file=sys.stderr)
        return 1
    return 0


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the trained shapes agent shipped with rsagent, on a shapes scene it never "
                          "trained on (or any picture): writes its turns as a page")
    demo.add_argument("--seed", type=int, default=0, metavar="N",
                      help="the scene: sample N of the shapes `test` split, which training never sees (default 0)")
    demo.add_argument("--query", default=None, metavar="TEXT",
                      help="what to segment (default: the scene's generated query); on a shapes scene the ground "
                      "truth comes from the shapes query grammar (docs/shapes.md)")
    demo.add_argument("--image", default=None, metavar="PATH",
                      help="any picture instead of a shapes scene (needs --query; no ground truth, no IoU)")
    demo.add_argument("--out", default="runs/demo-agent", metavar="DIR", help="output folder (default runs/demo-agent)")
    demo.add_argument("--max-turns", type=int, default=8, metavar="N", help="turn budget (default 8)")
    demo.add_argument("--device", default=None, help="torch device (default cpu)")
    demo.add_argument("--dtype", default=None, help="float32 (default on cpu), bfloat16 or float16")


def _demo(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bar around a one-line result
    from rsagent.demo import run_demo

    demo = run_demo(args.out, seed=args.seed, query=args.query, image=args.image, max_turns=args.max_turns,
                    device=args.device, dtype=args.dtype)
    for note in demo.notes:
        print(f"note: {note}")
    print(f"{demo.source}: {demo.query}")
    return _report_episode(demo.result, demo.seconds, iou_na=True)


def _dataset_spec(args: argparse.Namespace):
    from rsagent.eval.run import DatasetSpec

    return DatasetSpec.create(args.dataset, args.root, args.split, annotations=args.annotations,
                              queries=args.queries, limit=args.limit)


def _print_summary(summary: dict, out: str) -> None:
    print(f"n={summary['n']} gIoU={summary['gIoU']:.4f} cIoU={summary['cIoU']:.4f} "
          f"failed={summary['failed']} out={out}")


def _eval(args: argparse.Namespace, argv: list[str]) -> int:
    from functools import partial

    from rsagent.env.episode import EpisodeConfig
    from rsagent.eval.run import evaluate
    from rsagent.segmenters import make_segmenter

    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    summary = evaluate(
        _dataset_spec(args), args.out,
        policy_factory=partial(build_policy, args),  # rebuilt in each worker from the parsed options
        segmenter_factory=partial(make_segmenter, args.segmenter, **segmenter_kwargs(args)),
        episode=EpisodeConfig(max_turns=args.max_turns), protocol=args.protocol, settings=settings,
        resume=args.resume, workers=args.workers, executor=args.executor, batch_size=args.batch_size,
        progress=not args.no_progress, argv=argv, gallery=args.gallery, ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker)
    _print_summary(summary, args.out)
    return 0


def _score(args: argparse.Namespace, argv: list[str]) -> int:
    from rsagent.eval.run import score

    summary = score(_dataset_spec(args), args.predictions, args.out, protocol=args.protocol, resume=args.resume,
                    progress=not args.no_progress, argv=argv, gallery=args.gallery)
    _print_summary(summary, args.out)
    if summary["missing"] or summary["unreadable"]:
        print(f"rsagent: {len(summary['missing'])} predictions missing, {len(summary['unreadable'])} unreadable "
              "(scored as empty; listed in summary.json)", file=sys.stderr)
    return 0


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        try:
            mix[kind.strip()] = float(weight)
        except ValueError:
            raise RsagentError(f"--openings: {part!r} is not kind=weight") from None
    return mix


def _synth(args: argparse.Namespace, argv: list[str]) -> int:
    from functools import partial

    from rsagent.core.frames import make_frame
    from rsagent.eval.run import DatasetSpec
    from rsagent.segmenters import make_segmenter
    from rsagent.synth.filters import FilterConfig
    from rsagent.synth.queries import QueryConfig
    from rsagent.synth.run import SynthConfig, synthesize

    if args.max_turns < 1:
        raise RsagentError(f"--max-turns must be at least 1, got {args.max_turns}")
    teacher = None
    if args.teacher_base_url or args.teacher_model:
        if not (args.teacher_base_url and args.teacher_model):
            raise RsagentError("a teacher needs both --teacher-base-url URL and --teacher-model NAME")
        teacher = {"base_url": args.teacher_base_url, "model": args.teacher_model,
                   "api_key_env": args.teacher_api_key_env or None, "seed": args.seed}
    elif args.rewrite or args.teacher_queries:
        raise RsagentError("--rewrite and --teacher-queries need a teacher: --teacher-base-url URL --teacher-model NAME")
    queries = {k: v for k, v in (("absent_rate", args.absent_rate), ("per_target", args.per_target)) if v is not None}
    config = SynthConfig(
        seed=args.seed, num=args.num, max_turns=args.max_turns,
        frame=make_frame(args.frame, max_pixels=args.max_pixels).to_dict(), mix=tuple(_parse_mix(args.openings).items()),
        queries=QueryConfig(**queries), filters=FilterConfig.for_segmenter(args.segmenter, args.min_iou,
                                                                           max_turns=args.max_turns),
        teacher=teacher, rewrite=args.rewrite, teacher_queries=args.teacher_queries, variants=args.variants,
        mistake_loss=args.mistake_loss)
    dataset = DatasetSpec.create(args.dataset, args.root, args.split, annotations=args.annotations, queries=args.queries)
    stats = synthesize(dataset, args.out, config=config, segmenter=args.segmenter,
                       segmenter_factory=partial(make_segmenter, args.segmenter, **segmenter_kwargs(args)),
                       resume=args.resume, workers=args.workers, executor=args.executor, batch_size=args.batch_size,
                       progress=not args.no_progress, argv=argv, gallery=args.gallery, ray_address=args.ray_address)
    print(f"items={stats['items']} accepted={stats['accepted']} rejected={stats['rejected']} out={args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(raw)
    try:
        _default_root(args)
        if args.command == "segment":
            return _segment(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "eval":
            return _eval(args, ["rsagent", *raw])
        if args.command == "score":
            return _score(args, ["rsagent", *raw])
        if args.command == "shapes":
            return _shapes(args)
        if args.command == "synth":
            return _synth(args, ["rsagent", *raw])
        if args.command == "train":
            return _train(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "serve":
            return _serve(args)
    except RsagentError as exc:
        print(f"rsagent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("eval", "score", "synth"):
            print(f"rsagent: interrupted; finished samples are kept in {args.out}: finish with --resume",
                  file=sys.stderr)
            return 130
        if args.command == "train":
            print("rsagent: interrupted; the checkpoints are kept: continue with --resume", file=sys.stderr)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
