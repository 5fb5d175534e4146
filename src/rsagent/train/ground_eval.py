"""Grounding's held-out check: greedy answers to `test` queries, scored by box IoU with the target and
by picked-right (the shape the answer's box overlaps most is the target), beside baselines computed on the
same samples: a random shape; a random shape of the target's colour (`colour_only`, which knows the colour
even when the query does not name it); and what perfect perception of some attributes alone allows: a random
shape among those matching the colour the query names (`named_colour`), or its colour and kind
(`named_colour_kind`). Picking is also broken down by which attributes the query names (`by_named`)."""

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
    result = {"n": len(items), "parsed": parsed, "iou": _ci(ious), "picked": _ci(np.asarray(picked, float)),
              "random_shape": _random_among(items, lambda it, i: True),
              "colour_only": _random_among(items, lambda it, i: it["colours"][i] == it["colours"][it["target"]]),
              "mean_shapes": float(np.mean([len(it["boxes"]) for it in items]))}
    if items and "named" in items[0]:  # attribute queries: what each attribute is worth, and picking by them
        result.update(_named_baselines(items))
        groups: dict[str, list[bool]] = {}
        for it, hit in zip(items, picked):
            groups.setdefault(_named_key(it["named"]), []).append(hit)
        result["by_named"] = {k: {"n": len(v), "picked": float(np.mean(v))} for k, v in sorted(groups.items())}
    if listed:  # answers that list the scene (`--answer inventory`): how right the lists are
        total = {k: sum(c[k] for c in listed) for k in listed[0]}
        found = max(total["found"], 1)
        result["inventory"] = {"answers": len(listed), "count_right": total["count_right"] / len(listed),
                               "found": total["found"] / total["shapes"], "colour_right": total["colour"] / found,
                               "kind_right": total["kind"] / found, "size_right": total["size"] / found}
    return result


def _named_key(named: list) -> str:
    """Which attributes a query names, e.g. "colour+kind" ("the red circle"), "size+kind" ("the small star")."""
    return "+".join(w for w, v in zip(("size", "colour", "kind"), named) if v is not None)


def _named_baselines(items: list[dict]) -> dict:
    """A random shape among those that agree with the query on the named colour, and on the named colour and
    kind: the most that seeing only those attributes (perfectly) can pick."""
    def agrees(attrs: tuple[str, ...]):
        wanted = {"colours": 1, "kinds": 2}  # where each attribute sits in `named` (size, colour, kind)
        return lambda it, i: all(it["named"][wanted[a]] is None or it[a][i] == it["named"][wanted[a]] for a in attrs)
    return {"named_colour": _random_among(items, agrees(("colours",))),
            "named_colour_kind": _random_among(items, agrees(("colours", "kinds")))}


def _random_among(items: list[dict], candidate) -> dict:
    """Expected picked-right and box IoU with the target of a shape drawn at random among each item's
    candidates (`candidate(item, i)`; the target is always one)."""
    pick, iou = [], []
    for it in items:
        same = [i for i in range(len(it["boxes"])) if candidate(it, i)]
        pick.append(1 / len(same))
        iou.append(np.mean([box_iou(it["boxes"][i], it["boxes"][it["target"]]) for i in same]))
    return {"iou": float(np.mean(iou)), "picked": float(np.mean(pick))}


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
