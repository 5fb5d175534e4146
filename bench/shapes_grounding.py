"""Single-turn grounding on shapes: train the tiny Qwen2.5-VL from scratch to box the queried shape.

    .venv/bin/python bench/shapes_grounding.py --steps 2000 --out runs/grounding [--model DIR] [--eval 600]

The task is the agent's first move alone: the user turn (query first, then the 112 px scene, exactly
as an episode's first prompt under the project's chat template) answered with one
`segment` call holding the target's box. Training scenes are `train` seeds, with one query per
nameable shape ("the red circle", "the small blue star", "the cross"); a curriculum starts with 2-4
shapes per scene. Evaluation is on `test` seeds never trained on: greedy answers, box IoU with the
target's visible box, and the picked-right rate (the shape whose box the answer overlaps most is the
target), against two baselines computed exactly on the same samples: a random shape, and a random
shape of the queried colour. Writes `OUT/log.jsonl`, `OUT/result.json` and the trained model folder
`OUT/model` (loads with --policy qwen --model OUT/model).

`--answer episode` trains the same task in the episode's own words instead: the prompt is a real
episode's first prompt (system prompt with the tools, then the user turn) and the answer is the oracle
expert's first turn (its reasoning, then the call), exactly what a synthesized trajectory starts with.
It bridges a model grounded on bare calls to the format SFT and RL use.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from rsagent.core.frames import SmartResizeFrame
from rsagent.core.mask import GroundTruth, box_iou
from rsagent.data.shapes import queries as Q
from rsagent.data.shapes.generate import HELD_OUT_PAIRS, generate, rng_for
from rsagent.data.shapes.scene import SceneConfig, sample_scene
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.env.prompt import user_text
from rsagent.policies.chat import render_chat, render_images
from rsagent.policies.oracle import OraclePolicy
from rsagent.segmenters.grabcut import GrabCutSegmenter
from rsagent.policies.qwen import load_processor, load_qwen_model, pixel_limits, save_pixel_limits
from rsagent.shapes_model import build_shapes_model, describe
from rsagent.train.run_dir import freeze_vision

_BOX = re.compile(r'"box": \[(\d+), (\d+), (\d+), (\d+)\]')


def answer(box) -> str:
    call = json.dumps({"name": "segment", "arguments": {"box": [int(v) for v in box]}})
    return f"<tool_call>\n{call}\n</tool_call>"


def scene_items(split: str, index: int, max_shapes: int, size: int, min_shapes: int = 2, cell: int = 28,
                colour_only: bool = False) -> list[dict]:
    """Every single-target attribute query of one scene: image, query, target id, all shapes' boxes
    (`colour_only`: only "the <colour> shape", for shapes whose colour is unique in the scene)."""
    rng = rng_for(split, index)
    banned = frozenset(HELD_OUT_PAIRS) if split == "train" else frozenset()  # as the train split draws them
    scene = sample_scene(rng, SceneConfig(size=size, min_shapes=min_shapes, max_shapes=max_shapes), banned=banned)
    boxes = [s.box for s in scene.shapes]
    items = []
    for s in scene.shapes:
        descs = [(None, s.colour, None)] if colour_only else Q._descs_of(s)
        programs = [{"op": "the", "desc": d} for d in descs if Q._clear_unique(d, s, scene.shapes)]
        if programs:
            program = programs[int(rng.integers(len(programs)))]
            items.append({"image": scene.image, "query": Q.text(program), "target": s.id, "boxes": boxes,
                          "colours": [t.colour for t in scene.shapes], "colour": program["desc"][1],
                          "cover": token_cover(s.mask, cell), "mask": s.mask,
                          "sample_id": f"{split}-{index}-{s.id}"})
    return items


def dataset_items(split: str, index: int, cell: int = 28) -> list[dict]:
    """Sample `index` of the shapes dataset's `split` as a training item (`--queries mix`): the scene and
    query `rsagent shapes make` writes, of any kind in the dataset's mix (relations, ordinals, reasoning,
    several targets, absent ones), its target the union of the targets' masks."""
    sample = generate(split, index)
    mask = sample.mask
    return [{"image": sample.scene.image, "query": sample.query, "mask": mask, "cover": token_cover(mask, cell),
             "sample_id": sample.sample_id}]


def token_cover(mask: np.ndarray, cell: int) -> np.ndarray:
    """The share of each merged visual token's cell (row-major, as the tokens come) covered by `mask`."""
    h, w = mask.shape
    return mask[:h // cell * cell, :w // cell * cell].reshape(h // cell, cell, w // cell, cell).mean((1, 3)).reshape(-1)


class MatchHead(torch.nn.Module):
    """Auxiliary, thrown away after training: from the language model's hidden state at each visual
    token (after `layer` layers), is this token part of the queried shape? It supervises the circuit
    grounding needs (visual tokens that read the query, before them, and say whether they match it)
    densely, at every visual token, instead of only through the four coordinates of the answer."""

    def __init__(self, hidden: int, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.linear = torch.nn.Linear(hidden, 1)

    def loss(self, hidden_states, inputs, items: list[dict], image_token_id: int):
        states = hidden_states[self.layer][inputs["input_ids"] == image_token_id]  # (batch x tokens, hidden), in order
        target = torch.from_numpy(np.concatenate([it["cover"] for it in items])).float()
        logits = self.linear(states).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


class AttendTarget:
    """Auxiliary, no parameters: one attention head of the language model (`head` of `layer`), at the
    positions that write the box's four coordinates, is trained to put its weight on the visual tokens
    of the queried shape (in proportion to how much of each it covers). The answer's own circuit is
    supervised where the choice is made, instead of through four coordinate tokens alone; the head's
    values (the tokens' taught rows and columns) then carry the target's place to the answer."""

    def __init__(self, tokenizer, layer: int, head: int = 0) -> None:
        from rsagent.shapes_model import NUMBERS

        self.layer, self.head = layer, head
        self.numbers = torch.tensor(sorted({tokenizer.convert_tokens_to_ids(f) for v in range(NUMBERS)
                                            for f in (str(v), f" {v}")}))

    def loss(self, attentions, inputs, items: list[dict], image_token_id: int):
        att = attentions[self.layer][:, self.head]  # (batch, query position, key position)
        labels, ids = inputs["labels"], inputs["input_ids"]
        losses = []
        for b, it in enumerate(items):
            coords = (torch.isin(labels[b], self.numbers)).nonzero().flatten()[:4]
            target = torch.from_numpy(it["cover"]).float()
            if len(coords) < 4 or target.sum() == 0:
                continue
            visual = (ids[b] == image_token_id).nonzero().flatten()[:len(target)]  # the first image's tokens
            weights = att[b][coords - 1][:, visual]  # the rows that predict each coordinate
            losses.append(-(target / target.sum() * torch.log(weights + 1e-6)).sum(-1).mean())
        return torch.stack(losses).mean() if losses else torch.zeros(())


def as_episode(item: dict, frame: SmartResizeFrame, segmenter) -> dict:
    """`item` in the episode's own words: the real first prompt of an episode on it (system prompt with
    the tools, user turn, image) and the oracle expert's first turn as the answer (`--answer episode`)."""
    task = EpisodeTask(item["image"], item["query"], item["sample_id"], GroundTruth(item["mask"]))
    episode = Episode(task, segmenter, EpisodeConfig(), frame)
    return {**item, "messages": render_images(episode, episode.messages()),
            "answer": OraclePolicy().act([episode])[0]}


def messages(item: dict, frame: SmartResizeFrame) -> list[dict]:
    if "messages" in item:
        return item["messages"]
    h, w = item["image"].shape[:2]
    shown = frame.describe(frame.display_size(w, h))
    return [{"role": "user", "content": [{"type": "text", "text": user_text(item["query"], shown)},
                                         {"type": "image", "image": item["image"]}]}]


def batch_inputs(processor, items: list[dict], frame, with_answer: bool):
    texts, prompt_lens = [], []
    for it in items:
        msgs = messages(it, frame)
        prompt = render_chat(processor.tokenizer, msgs, add_generation_prompt=True)
        if with_answer:
            full = render_chat(processor.tokenizer, msgs + [{"role": "assistant", "content": [
                {"type": "text", "text": it.get("answer") or answer(it["boxes"][it["target"]])}]}],
                add_generation_prompt=False)
            assert full.startswith(prompt)
            texts.append(full)
        else:
            texts.append(prompt)
        prompt_lens.append(prompt)
    inputs = processor(text=texts, images=[it["image"] for it in items], return_tensors="pt", padding=True)
    if with_answer:  # loss on the answer only (its end marker included): after the last assistant header
        labels = inputs["input_ids"].clone()
        tok = processor.tokenizer
        start_id = tok.convert_tokens_to_ids("<|im_start|>")
        header = len(tok("assistant\n")["input_ids"])
        for b in range(len(items)):
            n = int((inputs["input_ids"][b] == start_id).nonzero()[-1]) + 1 + header
            labels[b, :n] = -100
            end = int((inputs["input_ids"][b] == tok.eos_token_id).nonzero()[-1])
            labels[b, end + 1:] = -100  # the template's newline after <|im_end|> is not the model's
        labels[inputs["attention_mask"] == 0] = -100
        inputs["labels"] = labels
    return inputs


@torch.inference_mode()
def evaluate(model, processor, items: list[dict], frame, batch: int = 32, max_new_tokens: int = 40) -> dict:
    processor.tokenizer.padding_side = "left"
    ious, picked, parsed = [], [], 0
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        inputs = batch_inputs(processor, chunk, frame, with_answer=False)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for it, t in zip(chunk, texts):
            m = _BOX.search(t)
            if m is None:
                ious.append(0.0); picked.append(False)
                continue
            parsed += 1
            box = [int(v) for v in m.groups()]
            overlaps = [box_iou(box, b) for b in it["boxes"]]
            ious.append(overlaps[it["target"]])
            picked.append(max(overlaps) > 0 and int(np.argmax(overlaps)) == it["target"])
    processor.tokenizer.padding_side = "right"
    rand_iou = [np.mean([box_iou(b, it["boxes"][it["target"]]) for b in it["boxes"]]) for it in items]
    rand_pick = [1 / len(it["boxes"]) for it in items]
    col_iou, col_pick = [], []
    for it in items:
        same = [i for i, c in enumerate(it["colours"]) if c == it["colours"][it["target"]]]
        col_iou.append(np.mean([box_iou(it["boxes"][i], it["boxes"][it["target"]]) for i in same]))
        col_pick.append(1 / len(same))
    return {"n": len(items), "parsed": parsed, "iou": _ci(ious), "picked": _ci(np.asarray(picked, float)),
            "random_shape": {"iou": float(np.mean(rand_iou)), "picked": float(np.mean(rand_pick))},
            "colour_only": {"iou": float(np.mean(col_iou)), "picked": float(np.mean(col_pick))},
            "mean_shapes": float(np.mean([len(it["boxes"]) for it in items]))}


def _ci(values) -> dict:
    """Mean and a 95% normal interval over samples."""
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)]}


def eval_items(n: int, size: int, offset: int = 0) -> list[dict]:
    items, index = [], offset
    while len(items) < n:
        items += _one(index, size)
        index += 1
    return items[:n]


def _one(index: int, size: int) -> list[dict]:
    """One query per test scene (a random nameable shape), so samples are independent."""
    got = scene_items("test", 1_000_000 + index, 8, size)
    return got[int(rng_for("test", index).integers(len(got))):][:1] if got else []


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
    args = parser.parse_args()
    if args.queries == "mix" and (args.answer != "episode" or args.curriculum != "0,0" or args.colour_first):
        parser.error("--queries mix needs --answer episode and --curriculum 0,0 (and no --colour-first): a bare "
                     "call cannot answer absent or multi-target queries, and the dataset draws its own scenes")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.model:
        processor = load_processor(args.model, *pixel_limits(args.model))
        model = load_qwen_model(args.model, "cpu", torch.float32)
    else:
        model, processor = build_shapes_model(args.seed)
    frame = SmartResizeFrame()
    vision = model.config.vision_config
    cell = vision.spatial_merge_size * vision.patch_size  # pixels a side of one visual token
    processor.tokenizer.padding_side = "right"
    if args.answer == "episode":
        segmenter = GrabCutSegmenter()  # the episode needs one; a first turn never runs it
        prepare = lambda items: [as_episode(it, frame, segmenter) for it in items]  # noqa: E731
        new_tokens = 160  # the reasoning comes before the call
    else:
        prepare, new_tokens = (lambda items: items), 40
    build_s = time.perf_counter() - t0
    evals = prepare(eval_items(args.eval, args.size))
    before = evaluate(model, processor, evals[:64], frame, max_new_tokens=new_tokens)
    torch.manual_seed(args.seed)
    match = MatchHead(model.config.text_config.hidden_size, args.match_layer) if args.match_aux > 0 else None
    attend = AttendTarget(processor.tokenizer, args.attend_layer) if args.attend_aux > 0 else None
    if attend:  # attention weights are returned by the eager implementation only
        model.config.text_config._attn_implementation = "eager"
    if args.freeze_vision_blocks:
        freeze_vision(model, "blocks")
    params = [p for p in model.parameters() if p.requires_grad] + (list(match.parameters()) if match else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    budget = args.minutes * 60
    stages = [float(v) for v in args.curriculum.split(",")]
    log = (out / "log.jsonl").open("w")
    model.train()
    start, step, seen, scene_index, queue = time.perf_counter(), 0, 0, 0, []
    step_times = []
    last = min(args.steps, args.stop_after or args.steps)
    while step < last and (elapsed := time.perf_counter() - start) < budget:
        frac = step / args.steps  # schedule and curriculum follow steps, so a busy machine changes only the time
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        min_shapes, max_shapes = (1, 1) if frac < stages[0] else (2, 4) if frac < stages[1] else (2, 8)
        while len(queue) < args.batch:
            queue += prepare(dataset_items("train", scene_index, cell) if args.queries == "mix" else
                             scene_items("train", scene_index, max_shapes, args.size, min_shapes, cell,
                                         colour_only=frac < args.colour_first))
            scene_index += 1
        items, queue = queue[:args.batch], queue[args.batch:]
        ts = time.perf_counter()
        inputs = batch_inputs(processor, items, frame, with_answer=True)
        out_ = model(**inputs, output_hidden_states=match is not None, output_attentions=attend is not None)
        loss = out_.loss
        aux = match.loss(out_.hidden_states, inputs, items, model.config.image_token_id) if match else torch.zeros(())
        att = attend.loss(out_.attentions, inputs, items, model.config.image_token_id) if attend else torch.zeros(())
        opt.zero_grad()
        (loss + args.match_aux * aux + args.attend_aux * att).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step_times.append(time.perf_counter() - ts)
        step += 1
        seen += len(items)
        if step % 25 == 0:
            rec = {"step": step, "samples": seen, "scenes": scene_index, "seconds": round(elapsed, 1),
                   "loss": round(loss.item(), 4), "match_loss": round(aux.item(), 4), "attend_loss": round(att.item(), 4), "lr": lr, "max_shapes": max_shapes,
                   "tokens": int(inputs["attention_mask"].sum()) / len(items)}
            if args.eval_every and step % args.eval_every == 0:
                model.eval()
                quick = evaluate(model, processor, evals[:200], frame, max_new_tokens=new_tokens)
                model.train()
                rec.update(quick_picked=round(quick["picked"]["mean"], 3), quick_iou=round(quick["iou"]["mean"], 3))
            log.write(json.dumps(rec) + "\n"); log.flush()
            print(rec, flush=True)
    train_s = time.perf_counter() - start
    model.eval()
    t1 = time.perf_counter()
    after = evaluate(model, processor, evals, frame, max_new_tokens=new_tokens)
    eval_s = time.perf_counter() - t1
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    size = processor.image_processor.size  # the limits it was trained at: --policy qwen --model OUT/model shows views so
    save_pixel_limits(out / "model", size["shortest_edge"], size["longest_edge"])
    result = {"command": "bench/shapes_grounding.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
              "model": describe(model, processor), "steps": step, "samples": seen, "train_scenes": scene_index,
              "seconds": {"build": round(build_s, 1), "train": round(train_s, 1), "eval": round(eval_s, 1)},
              "step_seconds_median": float(np.median(step_times)), "before_training_64": before, "after": after}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
