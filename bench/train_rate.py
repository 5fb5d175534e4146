"""SFT and RL steps per minute for the tiny shapes model on the CPU, through the real training entry points.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_rate.py [--sft-steps 8] [--rl-steps 3]
        [--data auto|synth|DIR] [--sft-model random|DIR] [--rl-model auto|sft|DIR] [--out FILE.json]

SFT: `rsagent.train.train_sft` on configs/sft_shapes_cpu.yaml (steps of 8 trajectories, full fine-tuning,
float32), run for `--sft-steps` steps with a log line each, no rollouts, into a temporary folder. `--data`:
`auto` is runs/synth-shapes5k when this checkout has it, else `synth`: a small export made first, as
`rsagent synth --dataset shapes --split train:40 --max-pixels 12544` makes it. `--sft-model random`: a fresh
random shapes model (`rsagent shapes model` without perception pretraining; speed does not depend on the
weights). The rate counts the steps after the first, on the trainer's own clock (log.jsonl's `train_runtime`),
so loading and the first step's warm-up are left out; the call's whole wall time is reported beside it.

RL: `rsagent.train.train_rl` on configs/rl_shapes_cpu.yaml (a step: 4 prompts x 8 episodes sampled in lock-step
with grabcut, then the GRPO update on their tokens), run for `--rl-steps` steps without held-out rollouts or
gallery. `--rl-model auto`: runs/sft-b (the SFT model the documented RL runs started from) when present, else
`sft`: the model the SFT part just trained. The rate comes from log.jsonl's per-step seconds (rollout + update).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

from common import REPO, add_common_args, finish, start, table
from rsagent.train import load_rl_config, load_sft_config, train_rl, train_sft

NEVER = 10**6  # save_steps that never comes before the end


def small_export(out: Path, n: int = 40) -> Path:
    """`rsagent synth --dataset shapes --split train:N --max-pixels 12544` as a library call."""
    from rsagent.core.frames import make_frame
    from rsagent.data.shapes import DEFAULT_ROOT
    from rsagent.eval.run import DatasetSpec
    from rsagent.segmenters import make_segmenter
    from rsagent.synth.run import SynthConfig, synthesize
    from rsagent.shapes_model import MAX_PIXELS

    synthesize(DatasetSpec.create("shapes", DEFAULT_ROOT, f"train:{n}"), out,
               config=SynthConfig(frame=make_frame("qwen2.5-vl", max_pixels=MAX_PIXELS).to_dict()),
               segmenter_factory=partial(make_segmenter, "grabcut"), progress=False, gallery=0, argv=[])
    return out


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def _short(path: str) -> str:
    """A folder inside the checkout as a relative path (what the docs write); others as they are."""
    return str(Path(path).resolve().relative_to(REPO)) if Path(path).resolve().is_relative_to(REPO) else path


def sft_rate(args, tmp: Path) -> dict:
    data, measured = args.data, REPO / "runs" / "synth-shapes5k"
    if data == "auto":
        data = str(measured) if (measured / "sft.jsonl").is_file() else "synth"
    if data == "synth":
        data = str(small_export(tmp / "synth"))
    model = label = args.sft_model
    if model == "random":
        from rsagent.shapes_model import save_shapes_model

        model, label = str(tmp / "base"), "a fresh random shapes model"
        save_shapes_model(model, seed=0)
    out = tmp / "sft"
    t0 = time.perf_counter()
    config = load_sft_config(REPO / "configs" / "sft_shapes_cpu.yaml", data=data, model=model, out=str(out),
                             max_steps=args.sft_steps, logging_steps=1, save_steps=NEVER, eval_steps=0)
    train_sft(config)
    wall = time.perf_counter() - t0
    rows = [r for r in log_rows(out) if "loss" in r and "train_runtime" in r]
    first, last = rows[0], rows[-1]
    seconds = last["train_runtime"] - first["train_runtime"]
    steps = last["step"] - first["step"]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    return {"data": _short(data), "model": label, "out": str(out), "steps": last["step"], "timed_steps": steps,
            "seconds_per_step": seconds / steps, "steps_per_minute": 60 * steps / seconds,
            "batch": config.per_device_batch, "trajectories_per_minute": 60 * steps * config.per_device_batch / seconds,
            "tokens_per_second": tokens / seconds, "wall_s": wall}


def rl_rate(args, sft_model: str, tmp: Path) -> dict:
    model = args.rl_model
    if model == "auto":
        model = str(REPO / "runs" / "sft-b") if (REPO / "runs" / "sft-b" / "model.safetensors").is_file() else "sft"
    if model == "sft":
        model = sft_model
    out = tmp / "rl"
    t0 = time.perf_counter()
    config = load_rl_config(REPO / "configs" / "rl_shapes_cpu.yaml", model=model, out=str(out), max_steps=args.rl_steps,
                            eval_steps=0, gallery_steps=0, save_steps=NEVER, progress=False)
    train_rl(config)
    wall = time.perf_counter() - t0
    rows = [r for r in log_rows(out) if "seconds_rollout" in r]
    rollout = sum(r["seconds_rollout"] for r in rows)
    update = sum(r["seconds_update"] for r in rows)
    episodes = sum(r["groups"] for r in rows) * config.group_size
    return {"model": _short(model), "steps": len(rows), "prompts_per_step": config.prompts_per_step,
            "group_size": config.group_size, "seconds_per_step": (rollout + update) / len(rows),
            "steps_per_minute": 60 * len(rows) / (rollout + update), "rollout_share": rollout / (rollout + update),
            "episodes_per_minute_in_rollouts": 60 * episodes / rollout,
            "update_tokens_per_second": sum(r["tokens_trained"] for r in rows) / update,
            "turns_per_episode": sum(r["turns"] for r in rows) / len(rows), "wall_s": wall,
            "per_step_seconds": [[round(r["seconds_rollout"], 2), round(r["seconds_update"], 2)] for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-steps", type=int, default=8)
    parser.add_argument("--rl-steps", type=int, default=3)
    parser.add_argument("--data", default="auto", help="auto, synth, or a `rsagent synth` folder")
    parser.add_argument("--sft-model", default="random", help="random, or a Qwen2.5-VL shapes model folder")
    parser.add_argument("--rl-model", default="auto", help="auto, sft (the model trained above), or a model folder")
    add_common_args(parser)
    args = parser.parse_args()
    info = start(args)
    with tempfile.TemporaryDirectory(prefix="rsagent-bench-train-") as tmp:
        sft = sft_rate(args, Path(tmp))
        rl = rl_rate(args, sft["out"], Path(tmp))
    print(f"\nSFT: configs/sft_shapes_cpu.yaml, {sft['steps']} steps of {sft['batch']} trajectories from "
          f"{sft['model']} on {sft['data']}; RL: configs/rl_shapes_cpu.yaml, {rl['steps']} steps of "
          f"{rl['prompts_per_step']} prompts x {rl['group_size']} episodes from {rl['model']}\n")
    print(table(["stage", "steps/min", "s/step", "timed steps", "throughput", "wall s (with loading)"], [
        ["SFT", f"{sft['steps_per_minute']:.1f}", f"{sft['seconds_per_step']:.2f}", sft["timed_steps"],
         f"{sft['trajectories_per_minute']:.0f} trajectories/min, {sft['tokens_per_second']:.0f} tokens/s",
         f"{sft['wall_s']:.0f}"],
        ["RL", f"{rl['steps_per_minute']:.2f}", f"{rl['seconds_per_step']:.1f}", rl["steps"],
         f"rollouts {rl['episodes_per_minute_in_rollouts']:.0f} episodes/min ({rl['turns_per_episode']:.1f} turns), "
         f"update {rl['update_tokens_per_second']:.0f} tokens/s", f"{rl['wall_s']:.0f}"]]))
    print(f"\nRL step / SFT step: {rl['seconds_per_step'] / sft['seconds_per_step']:.1f}; rollouts are "
          f"{rl['rollout_share']:.2f} of an RL step")
    finish(args, info, {"sft": sft, "rl": rl})


if __name__ == "__main__":
    main()
