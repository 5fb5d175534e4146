"""`train_ground`: single-turn grounding on shapes, the first stage of the shapes recipe: train the tiny
Qwen2.5-VL to box the queried shape in one first turn.

The task is the agent's first move alone: the user turn (query first, then the scene, exactly as an
episode's first prompt under the project's chat template) answered with one `segment` call holding the
target's box. Training scenes are `train` seeds with one query per nameable shape ("the red circle", "the
small blue star"); a curriculum starts with one shape per scene, then 2-4, then 2-8. `answer: episode`
trains the same task in the episode's own words: a real episode's first prompt (system prompt with the
tools, then the user turn) answered with the oracle expert's first turn (its reasoning, then the call),
what a synthesized trajectory starts with. `queries: mix` trains on the shapes dataset's own samples
(every query kind). Evaluation is on `test` scenes never trained on (`ground_eval`).

    OUT/train_config.yaml        the config (also in every checkpoint)
    OUT/log.jsonl                every log_steps: loss, auxiliary losses, lr, samples, scenes; quick held-out checks
    OUT/checkpoint-N/            weights, processor, pixel limits, config and ground_state.pt (optimizer, MatchHead,
                                 the queued items' scenes, step, samples, RNG); `resume` continues the newest
    OUT/result.json              steps, samples, scenes, seconds, held-out results before (64 queries) and after
    OUT/ (config.json, model.safetensors, tokenizer, processor, rsagent_pixels.json)
                                 the final model: `--policy qwen --model OUT`

The schedule (learning rate and curriculum) follows `steps`; `stop_after` and `minutes` end a run earlier
at the same weights an uninterrupted run has at that step, and a resumed run continues those exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rsagent.core.device import resolve_device
from rsagent.core.frames import SmartResizeFrame
from rsagent.train.callbacks import LOG_FILE
from rsagent.train.config import CONFIG_FILE, write_config
from rsagent.train.ground_aux import AttendTarget, MatchHead
from rsagent.train.ground_config import GROUND_RESUMABLE_CHANGES, GroundConfig
from rsagent.train.ground_data import (ItemQueue, as_episode, batch_inputs, dataset_items, eval_items, inventory,
                                      scene_items)
from rsagent.train.ground_eval import evaluate
from rsagent.train.run_dir import CHECKPOINT_PREFIX, freeze_vision, prepare_out, publish_checkpoint, truncate_log

STATE_FILE = "ground_state.pt"
RESULT_FILE = "result.json"
QUICK_EVAL = 200  # held-out queries of the checks during training


def train_ground(config: GroundConfig, model_dir: str | Path | None = None) -> dict:
    """Run (or resume) grounding; writes the final model to `model_dir` (default: OUT itself) and returns
    result.json's contents with `out`."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    config.check()
    device = resolve_device(config.device)
    out = Path(config.out)
    checkpoint = prepare_out(out, config, GROUND_RESUMABLE_CHANGES)
    # on the CPU: a run checkpointed on a GPU resumes anywhere (the optimizer moves its state to the weights' device)
    state = torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=False) if checkpoint else None
    torch.set_num_threads(config.threads)
    model, processor = _load(config, checkpoint, device)
    frame = SmartResizeFrame()
    vision = model.config.vision_config
    cell = vision.spatial_merge_size * vision.patch_size  # pixels a side of one visual token
    processor.tokenizer.padding_side = "right"
    if config.answer == "episode":
        from rsagent.segmenters.grabcut import GrabCutSegmenter

        segmenter = GrabCutSegmenter()  # the episode needs one; a first turn never runs it
        prepare = lambda items: [as_episode(it, frame, segmenter) for it in items]  # noqa: E731
        new_tokens = 160  # the reasoning comes before the call
    elif config.answer == "inventory":
        prepare = lambda items: [{**it, "answer": inventory(it, cell)} for it in items]  # noqa: E731
        new_tokens = 200  # up to 8 listed shapes before the call
    else:
        prepare, new_tokens = (lambda items: items), 40
    build_s = time.perf_counter() - started
    evals = prepare(eval_items(config.eval_n, config.size))
    # the starting model's answers (a resumed run keeps its first session's)
    before = state["before"] if state else evaluate(model, processor, evals[:64], frame, max_new_tokens=new_tokens)
    torch.manual_seed(config.seed)
    match = MatchHead(model.config.text_config.hidden_size, config.match_layer).to(device) if config.match_aux > 0 else None
    attend = AttendTarget(processor.tokenizer, config.attend_layer) if config.attend_aux > 0 else None
    if attend:  # attention weights are returned by the eager implementation only
        model.config.text_config._attn_implementation = "eager"
    freeze_vision(model, config.freeze_vision)
    params = [p for p in model.parameters() if p.requires_grad] + (list(match.parameters()) if match else [])
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def make(source: dict) -> list[dict]:  # one scene's items, as `source` says it was drawn
        if config.queries == "mix":
            return prepare(dataset_items("train", source["index"], cell))
        return prepare(scene_items("train", source["index"], source["max_shapes"], config.size, source["min_shapes"],
                                   cell, colour_only=source["colour_only"]))

    queue = ItemQueue(make)
    step, seen, seconds, step_times = 0, 0, 0.0, []
    if state:
        opt.load_state_dict(state["optimizer"])
        if match:
            match.load_state_dict(state["match"])
        queue.restore(state["queue"])
        step, seen, seconds, step_times = state["step"], state["samples"], state["seconds"], list(state["step_times"])
        torch.set_rng_state(state["torch_rng"])
        if device == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        truncate_log(out / LOG_FILE, step)
    out.mkdir(parents=True, exist_ok=True)
    write_config(config, out / CONFIG_FILE)

    def save(at: int) -> None:
        _save_checkpoint(out, at, config, model, processor, {
            "step": at, "samples": seen, "seconds": seconds + time.perf_counter() - session, "step_times": step_times,
            "queue": queue.state(), "optimizer": opt.state_dict(), "match": match.state_dict() if match else None,
            "before": before, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device == "cuda" else None})

    one, few = config.stages()
    last = min(config.steps, config.stop_after or config.steps)
    budget = config.minutes * 60 if config.minutes is not None else math.inf
    first = step
    bar = tqdm(total=last, initial=step, desc="ground", unit="step", disable=not config.progress)
    model.train()
    session = time.perf_counter()
    with open(out / LOG_FILE, "a", encoding="utf-8") as log:
        while step < last and (elapsed := time.perf_counter() - session) < budget:
            frac = step / config.steps  # schedule and curriculum follow steps, so a busy machine changes only the time
            lr = config.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            min_shapes, max_shapes = (1, 1) if frac < one else (2, 4) if frac < few else (2, 8)
            items = queue.take(config.batch, lambda index: {  # scenes drawn now follow this step's curriculum
                "index": index, "min_shapes": min_shapes, "max_shapes": max_shapes,
                "colour_only": frac < config.colour_first})
            ts = time.perf_counter()
            inputs = batch_inputs(processor, items, frame, with_answer=True)
            if device != "cpu":
                inputs = inputs.to(device)
            out_ = model(**inputs, output_hidden_states=match is not None, output_attentions=attend is not None)
            loss = out_.loss
            aux = match.loss(out_.hidden_states, inputs, items, model.config.image_token_id) if match else torch.zeros(())
            att = attend.loss(out_.attentions, inputs, items, model.config.image_token_id) if attend else torch.zeros(())
            opt.zero_grad()
            (loss + config.match_aux * aux + config.attend_aux * att).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step_times.append(time.perf_counter() - ts)
            step += 1
            seen += len(items)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", match=f"{aux.item():.3f}")
            quick = bool(config.eval_every) and step % config.eval_every == 0
            if step % config.log_steps == 0 or quick:
                rec = {"step": step, "samples": seen, "scenes": queue.next_index, "seconds": round(seconds + elapsed, 1),
                       "loss": round(loss.item(), 4), "match_loss": round(aux.item(), 4),
                       "attend_loss": round(att.item(), 4), "lr": lr, "max_shapes": max_shapes,
                       "tokens": int(inputs["attention_mask"].sum()) / len(items)}
                if quick:
                    model.eval()
                    check = evaluate(model, processor, evals[:QUICK_EVAL], frame, max_new_tokens=new_tokens)
                    model.train()
                    rec.update(quick_picked=round(check["picked"]["mean"], 3), quick_iou=round(check["iou"]["mean"], 3))
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if config.progress:
                    bar.write(json.dumps(rec))
            if step % config.save_steps == 0:
                save(step)
        if step > first and step % config.save_steps:  # stopped between saves: the stop point can be resumed
            save(step)
    bar.close()
    seconds += time.perf_counter() - session
    model.eval()
    t1 = time.perf_counter()
    after = evaluate(model, processor, evals, frame, max_new_tokens=new_tokens)
    eval_s = time.perf_counter() - t1
    final = Path(model_dir) if model_dir is not None else out
    _save_model(final, config, model, processor)
    from rsagent.core.files import atomic_write_text
    from rsagent.shapes_model import describe

    result = {"config": config.to_dict(), "model": describe(model, processor), "steps": step, "samples": seen,
              "train_scenes": queue.next_index, "resumed_from": checkpoint,
              "seconds": {"build": round(build_s, 1), "train": round(seconds, 1), "eval": round(eval_s, 1)},
              "step_seconds_median": float(np.median(step_times)) if step_times else float("nan"),
              "before_training_64": before, "after": after}
    atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=1) + "\n")
    return {**result, "out": str(out)}


def _load(config: GroundConfig, checkpoint: str | None, device: str):
    """(model, processor): the checkpoint's when resuming; else `config.model`, or a fresh shapes model."""
    from rsagent.policies.qwen import load_processor, load_qwen_model, pixel_limits

    source = checkpoint or config.model
    if source is None:
        from rsagent.shapes_model import build_shapes_model

        model, processor = build_shapes_model(config.seed)
        return model.to(device), processor
    return load_qwen_model(str(source), device, torch.float32), load_processor(str(source), *pixel_limits(str(source)))


def _save_model(folder: Path, config: GroundConfig, model, processor) -> None:
    """Weights, processor, the pixel limits it was trained at and the config: a folder `--policy qwen
    --model` loads (showing views as trained)."""
    from rsagent.policies.qwen import save_model_folder

    save_model_folder(folder, model, processor)
    write_config(config, folder / CONFIG_FILE)


def _save_checkpoint(out: Path, step: int, config: GroundConfig, model, processor, state: dict) -> None:
    """OUT/checkpoint-N, written whole into a temporary folder then renamed; the oldest beyond the limit go."""
    tmp = out / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_model(tmp, config, model, processor)
    torch.save(state, tmp / STATE_FILE)
    publish_checkpoint(out, tmp, step, config.save_total_limit)


__all__ = ["GroundConfig", "train_ground"]
