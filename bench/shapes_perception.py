"""Can the shapes model learn to see? The colour of a lone shape, learned three ways for the same budget.

    .venv/bin/python bench/shapes_perception.py --steps 300 [--vision-steps 300] [--out runs/shapes-perception.json]

Arms (each from the same random initialisation, `--steps` AdamW steps of 32 one-shape `train` scenes,
scored on 200 `test` scenes):

- `lm`: the whole Qwen2.5-VL answers "<scene> -> colour word" (loss on the answer); the only
  gradient the vision tower gets comes through the random language model.
- `vision_probe`: the vision tower alone, its tokens mean-pooled into a linear colour classifier.
- `lm_after_vision_pretraining`: `shapes_vision.pretrain_vision` for `--vision-steps` first (labels
  from the scene graph, no colour words, no answers), then the `lm` arm.

docs/shapes.md explains why this is the first thing to check before any agent training on shapes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from rsagent.data.shapes.generate import rng_for
from rsagent.data.shapes.scene import COLOURS, SceneConfig, sample_scene
from rsagent.shapes_model import build_shapes_model
from rsagent.shapes_vision import pretrain_vision

PROMPT = "<|im_start|>colour?<|vision_start|><|image_pad|><|vision_end|>"


def scenes(split: str, start: int, n: int) -> list[tuple[np.ndarray, str]]:
    out = []
    for i in range(start, start + n):
        scene = sample_scene(rng_for(split, 7_000_000 + i), SceneConfig(size=112, min_shapes=1, max_shapes=1))
        out.append((scene.image, scene.shapes[0].colour))
    return out


def lm_batch(processor, items, with_answer: bool):
    tok = processor.tokenizer
    texts = [PROMPT + (f" {colour}<|im_end|>" if with_answer else "") for _, colour in items]
    inputs = processor(text=texts, images=[im for im, _ in items], return_tensors="pt", padding=True)
    if with_answer:
        labels = inputs["input_ids"].clone()
        end = tok.convert_tokens_to_ids("<|vision_end|>")
        for b in range(len(items)):
            labels[b, :int((inputs["input_ids"][b] == end).nonzero()[-1]) + 1] = -100
        labels[inputs["attention_mask"] == 0] = -100
        inputs["labels"] = labels
    return inputs


def train_lm(model, processor, steps: int, lr: float) -> list[dict]:
    tok = processor.tokenizer
    tok.padding_side = "right"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    test = scenes("test", 0, 200)
    curve = []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 50)
        model.train()
        loss = model(**lm_batch(processor, scenes("train", step * 32, 32), True)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            model.eval()
            tok.padding_side = "left"
            with torch.inference_mode():
                inputs = lm_batch(processor, test, False)
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            tok.padding_side = "right"
            said = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            acc = float(np.mean([s.strip() == colour for s, (_, colour) in zip(said, test)]))
            curve.append({"step": step, "loss": round(loss.item(), 4), "test_accuracy": acc})
            print(curve[-1], flush=True)
    return curve


def train_probe(model, processor, steps: int, lr: float) -> list[dict]:
    colours = list(COLOURS)
    visual = model.model.visual
    head = torch.nn.Linear(model.config.vision_config.out_hidden_size, len(colours))
    opt = torch.optim.AdamW(list(visual.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    test = scenes("test", 0, 200)

    def logits(items):
        inputs = processor.image_processor(images=[im for im, _ in items], return_tensors="pt")
        tokens = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        tokens = torch.cat(list(tokens)) if isinstance(tokens, (list, tuple)) else tokens
        return head(tokens.view(len(items), -1, tokens.shape[-1]).mean(1))

    curve = []
    for step in range(1, steps + 1):
        items = scenes("train", step * 32, 32)
        target = torch.tensor([colours.index(c) for _, c in items])
        loss = torch.nn.functional.cross_entropy(logits(items), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            with torch.no_grad():
                acc = float((logits(test).argmax(1) == torch.tensor([colours.index(c) for _, c in test])).float().mean())
            curve.append({"step": step, "loss": round(loss.item(), 4), "test_accuracy": acc})
            print(curve[-1], flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--vision-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: more threads run slower
    results = {"command": "bench/shapes_perception.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
               "chance": 1 / len(COLOURS)}
    arms = {"lm": lambda m, p: train_lm(m, p, args.steps, args.lr),
            "vision_probe": lambda m, p: train_probe(m, p, args.steps, args.lr),
            "lm_after_vision_pretraining": lambda m, p: (pretrain_vision(m, p, args.vision_steps),
                                                          train_lm(m, p, args.steps, args.lr))[1]}
    for name, run in arms.items():
        print(f"--- {name}", flush=True)
        model, processor = build_shapes_model(0)
        t0 = time.perf_counter()
        results[name] = {"curve": run(model, processor), "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
