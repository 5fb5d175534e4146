"""Reasoning text for the oracle's turns: what the overlay shows and why the next action follows.

Wording varies (templates drawn with the episode's random generator) so that SFT data does not
teach one fixed sentence. Nothing here mentions the ground truth: it speaks of what is visible.
"""

from __future__ import annotations

import random

import numpy as np

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")


def place_in(box: tuple[float, float, float, float], x: float, y: float) -> str:
    """Where (x, y) lies inside `box`, in words: 'top-left', 'centre', 'bottom', ..."""
    fx = (x - box[0]) / max(1e-6, box[2] - box[0])
    fy = (y - box[1]) / max(1e-6, box[3] - box[1])
    row = _ROWS[int(np.clip(fy * 3, 0, 2))]
    col = _COLS[int(np.clip(fx * 3, 0, 2))]
    if row == "middle" and col == "centre":
        return "centre"
    if row == "middle":
        return col
    if col == "centre":
        return row
    return f"{row}-{col}"


def size_words(fraction: float) -> str:
    if fraction < 0.01:
        return "tiny"
    if fraction < 0.05:
        return "small"
    if fraction < 0.25:
        return "medium-sized"
    return "large"


class Narrator:
    def __init__(self, rng: random.Random, query: str) -> None:
        self.rng, self.query = rng, query.strip().rstrip(".")

    def _pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def start(self, where: str, size: str, box: list[int], view: int) -> str:
        return self._pick(
            f"The query asks for \"{self.query}\". I can see it in the {where} of view {view}; it is {size}. "
            f"I'll start with a box around it, {box}.",
            f"Looking for \"{self.query}\": it is the {size} region in the {where}. A box {box} on view {view} "
            f"should give the segmenter a good first guess.",
            f"\"{self.query}\" matches the {size} object in the {where} of the view. Let me box it: {box}.",
        )

    def zoom(self, where: str, pct: float, box: list[int]) -> str:
        return self._pick(
            f"\"{self.query}\" is small (about {pct:.1f}% of the image), in the {where}. Zooming in on {box} "
            f"gives the segmenter more pixels to work with.",
            f"The target is only a small patch in the {where} ({pct:.1f}% of the image). I'll zoom in on {box} "
            f"before segmenting so its outline is clear.",
            f"At this scale \"{self.query}\" is hard to outline; it sits in the {where}. Zooming into {box} first.",
        )

    def start_zoomed(self, box: list[int], view: int) -> str:
        return self._pick(
            f"In the zoomed view {view} the target is clearly visible. Boxing it at {box}.",
            f"Now the target fills much of view {view}; a box {box} around it should segment it well.",
            f"View {view} shows the target up close. I'll segment it with the box {box}.",
        )

    def next_part(self, where: str, box: list[int], done_id: int) -> str:
        return self._pick(
            f"Candidate {done_id} covers one part well, but \"{self.query}\" also appears in the {where}. "
            f"Segmenting that part next with the box {box}.",
            f"One part is done (candidate {done_id}). Another part of the target is in the {where}; boxing it: {box}.",
            f"Candidate {done_id} fits that piece. The target continues in the {where}, so I'll add it with {box}.",
        )

    def add_click(self, cid: int, where: str, pct: float, point: list[int]) -> str:
        return self._pick(
            f"Candidate {cid} covers most of it but misses a region on its {where} side (about {pct:.0f}% of the "
            f"object). A positive click at {point} should add it.",
            f"The overlay of candidate {cid} leaves out part of the target toward the {where}. Adding a "
            f"foreground click at {point}.",
            f"Candidate {cid} is too small: the {where} part of \"{self.query}\" is not covered. I'll click {point} "
            f"as foreground.",
        )

    def remove_click(self, cid: int, where: str, pct: float, point: list[int]) -> str:
        return self._pick(
            f"Candidate {cid} spills over onto something that is not the target near its {where} "
            f"(about {pct:.0f}% extra area). A negative click at {point} should remove it.",
            f"The overlay of candidate {cid} includes background around the {where}. Marking {point} as "
            f"not part of the target.",
            f"Candidate {cid} is too large: the region near its {where} does not belong to \"{self.query}\". "
            f"Negative click at {point}.",
        )

    def submit(self, ids: list[int], reason: str) -> str:
        which = f"candidate {ids[0]}" if len(ids) == 1 else f"candidates {ids}"
        if reason == "good":
            return self._pick(f"{which.capitalize()} now follows the outline of \"{self.query}\" closely. Submitting.",
                              f"The overlay matches the target well; I'll submit {which}.",
                              f"{which.capitalize()} covers the target with clean edges, so I submit it.")
        if reason == "stalled":
            return self._pick(f"More clicks are not improving the mask; {which} is the best so far. Submitting it.",
                              f"The last refinements did not help, so I'll stop and submit {which}.",
                              f"The outline has stopped improving. Submitting {which}.")
        if reason == "budget":
            return self._pick(f"Only one turn is left, so I submit {which}.",
                              f"I am out of turns to refine further; submitting {which}.")
        return self._pick(f"Nothing in the image matches \"{self.query}\"; I'll submit an empty answer.",
                          f"I do not see \"{self.query}\" anywhere in the image, so the answer is empty.")
