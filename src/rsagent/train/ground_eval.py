"""Grounding's held-out check: greedy answers to `test` queries, scored by box IoU with the target and
by picked-right (the shape the answer's box overlaps most is the target), beside two baselines computed
on the same samples: a random shape, and a random shape of the queried colour."""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from rsagent.core.mask import box_iou
from rsagent.train.ground_data import batch_inputs, read_inventory

_BOX = re.compile(r'"box": \[(\d+), (\d+), (\d+), (\d+)\]')


@torch.inference_mode()
def evaluate(model, processor, items: list[dict], frame, batch: int = 32, max_new_tokens: int = 40) -> dict:
    processor.tokenizer.padding_side = "left"
    ious, picked, parsed, listed = [], [], 0, []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        inputs = batch_inputs(processor, chunk, frame, with_answer=False).to(model.device)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for it, t in zip(chunk, texts):
            entries = read_inventory(t)
            if entries is not None:
                listed.append(_inventory_check(entries, it))
            m = _BOX.search(t)
            if m is None:
                ious.append(0.0)
                picked.append(False)
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
    result = {"n": len(items), "parsed": parsed, "iou": _ci(ious), "picked": _ci(np.asarray(picked, float)),
              "random_shape": {"iou": float(np.mean(rand_iou)), "picked": float(np.mean(rand_pick))},
              "colour_only": {"iou": float(np.mean(col_iou)), "picked": float(np.mean(col_pick))},
              "mean_shapes": float(np.mean([len(it["boxes"]) for it in items]))}
    if listed:  # answers that list the scene (`--answer inventory`): how right the lists are
        total = {k: sum(c[k] for c in listed) for k in listed[0]}
        found = max(total["found"], 1)
        result["inventory"] = {"answers": len(listed), "count_right": total["count_right"] / len(listed),
                               "found": total["found"] / total["shapes"], "colour_right": total["colour"] / found,
                               "kind_right": total["kind"] / found, "size_right": total["size"] / found}
    return result


def _inventory_check(entries: list[tuple[str, str, str, list[int]]], item: dict) -> dict:
    """How one answer's list of shapes compares with the scene, as counts: each true shape matched to the
    listed entry whose box overlaps it most (found: box IoU 0.5 or more), and of those found, the words right."""
    found = colour = kind = size = 0
    for i, box in enumerate(item["boxes"]):
        overlaps = [box_iou(box, e[3]) for e in entries]
        if overlaps and max(overlaps) >= 0.5:
            size_w, colour_w, kind_w, _ = entries[int(np.argmax(overlaps))]
            found += 1
            colour += colour_w == item["colours"][i]
            kind += kind_w == item["kinds"][i]
            size += size_w == item["sizes"][i]
    return {"shapes": len(item["boxes"]), "count_right": int(len(entries) == len(item["boxes"])), "found": found,
            "colour": colour, "kind": kind, "size": size}


def _ci(values) -> dict:
    """Mean and a 95% normal interval over samples."""
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)]}
