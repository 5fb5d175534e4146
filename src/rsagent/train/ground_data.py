"""What grounding trains and is evaluated on: single first turns on shapes scenes, as items and batches.

An item is one scene and one query with its target (image, query, target mask, its share of each visual
token's cell, every shape's box); with `--answer episode` it also holds an episode's real first prompt and
the oracle expert's first turn. Every item comes from a seeded generator (a scene index of a split), so
the queue of training items can be rebuilt exactly from a few numbers (`ItemQueue.state`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np

from rsagent.core.frames import SmartResizeFrame
from rsagent.core.mask import GroundTruth
from rsagent.data.shapes import queries as Q
from rsagent.data.shapes.generate import HELD_OUT_PAIRS, generate, rng_for
from rsagent.data.shapes.scene import SceneConfig, sample_scene
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.env.prompt import user_text
from rsagent.policies.chat import render_chat, render_images
from rsagent.policies.oracle import OraclePolicy


def answer(box) -> str:
    """The bare answer (`--answer call`): one segment call holding the target's box."""
    call = json.dumps({"name": "segment", "arguments": {"box": [int(v) for v in box]}})
    return f"<tool_call>\n{call}\n</tool_call>"


INVENTORY_START = "Shapes: "
_ENTRY = re.compile(r"(\w+) (\w+) (\w+) \[(\d+), (\d+), (\d+), (\d+)\]")  # one listed "size colour kind [box]"


def inventory(item: dict, cell: int = 28) -> str:
    """Every shape of the scene as " <size> <colour> <kind> [x0, y0, x1, y1]", in reading order of the visual token
    holding its centre (rows of `cell` pixels, then left to right), before the call (`--answer inventory`).
    Why: listing the scene is dense supervision (every shape's words and box, not one box), and with the
    list written, picking the queried shape becomes matching words in text and copying a box, not
    comparing the query with visual tokens."""
    order = sorted(range(len(item["boxes"])), key=lambda i: (
        (item["boxes"][i][1] + item["boxes"][i][3]) // 2 // cell, (item["boxes"][i][0] + item["boxes"][i][2]) / 2))
    lines = [f"{item['sizes'][i]} {item['colours'][i]} {item['kinds'][i]} [{', '.join(str(int(v)) for v in item['boxes'][i])}]"
             for i in order]
    # one line, "; " between shapes: every colour word keeps its leading space, the token the query has
    return INVENTORY_START + "; ".join(lines) + ".\n" + answer(item["boxes"][item["target"]])


def read_inventory(text: str) -> list[tuple[str, str, str, list[int]]] | None:
    """The (size, colour, kind, box) entries of the list an answer writes in `inventory`'s format (the
    well-formed ones of its line), or None when the answer writes no list."""
    if INVENTORY_START not in text:
        return None
    line = text.split(INVENTORY_START, 1)[1].split("\n", 1)[0]
    return [(m.group(1), m.group(2), m.group(3), [int(v) for v in m.groups()[3:]]) for m in _ENTRY.finditer(line)]


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
                          "named": list(program["desc"]),  # (size, colour, kind) the query names, None where not
                          "kinds": [t.kind for t in scene.shapes], "sizes": [t.size for t in scene.shapes],
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
    """The processor's batch of `items`' prompts (with their answers: `labels` on the answer only)."""
    texts = []
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


def eval_items(n: int, size: int, offset: int = 0) -> list[dict]:
    """The held-out queries: one per `test` scene, scenes of 2-8 shapes."""
    items, index = [], offset
    while len(items) < n:
        items += _one(index, size)
        index += 1
    return items[:n]


def _one(index: int, size: int) -> list[dict]:
    """One query per test scene (a random nameable shape), so samples are independent."""
    got = scene_items("test", 1_000_000 + index, 8, size)
    return got[int(rng_for("test", index).integers(len(got))):][:1] if got else []


class ItemQueue:
    """Training items in the order they are drawn: all items of train scene 0, then of scene 1, ...

    `make(source)` gives one scene's (prepared) items, `source` being a JSON-able dict of the scene index
    and how it was drawn (the curriculum's shape counts at the time). Both are deterministic, so `state()`,
    the sources and positions of the items still queued, rebuilds the queue exactly (`restore`)."""

    def __init__(self, make: Callable[[dict], list[dict]]) -> None:
        self.make = make
        self.next_index = 0  # the next scene to draw: the scenes drawn so far
        self._queued: list[tuple[dict, int, dict]] = []  # (source, position among its scene's items, item)

    def take(self, n: int, source: Callable[[int], dict]) -> list[dict]:
        """The next `n` items, drawing scenes (`source(index)` says how) while fewer are queued."""
        while len(self._queued) < n:
            drawn = source(self.next_index)
            self._queued += [(drawn, k, item) for k, item in enumerate(self.make(drawn))]
            self.next_index += 1
        taken, self._queued = self._queued[:n], self._queued[n:]
        return [item for _, _, item in taken]

    def state(self) -> dict:
        return {"next_index": self.next_index, "queued": [[source, k] for source, k, _ in self._queued]}

    def restore(self, state: dict) -> None:
        self.next_index = int(state["next_index"])
        self._queued, made = [], None
        for source, k in state["queued"]:  # queued items of one scene are consecutive: make each scene once
            if made is None or made[0] != source:
                made = (source, self.make(source))
            self._queued.append((source, k, made[1][k]))
