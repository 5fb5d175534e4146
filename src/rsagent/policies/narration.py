"""Reasoning text for the expert's turns: what the overlay shows and why the next action follows.

It states only what a policy could see: the query, the image, the latest overlay and the
observation text. Quantities that only the ground truth knows (how much of the target a candidate
misses, how large the target is in percent) are said in words ("a thin strip", "a large part"),
never as numbers. Wording varies (templates drawn with the episode's random generator), and no
template is used twice in a row, so SFT data does not teach one fixed sentence.
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


def direction_words(src: tuple[float, float, float, float], dst: tuple[float, float, float, float]) -> str:
    """Where box `dst` lies seen from box `src`, along the axis where they are further apart."""
    dx = (dst[0] + dst[2] - src[0] - src[2]) / 2
    dy = (dst[1] + dst[3] - src[1] - src[3]) / 2
    if abs(dx) >= abs(dy):
        return "to its right" if dx > 0 else "to its left"
    return "below it" if dy > 0 else "above it"


def size_words(fraction: float) -> str:
    if fraction < 0.01:
        return "tiny"
    if fraction < 0.05:
        return "small"
    if fraction < 0.25:
        return "medium-sized"
    return "large"


def amount_words(fraction: float) -> str:
    """How much of something an overlay visibly gets wrong, in words (`fraction` of the object)."""
    if fraction < 0.08:
        return "a thin strip"
    if fraction < 0.25:
        return "a noticeable part"
    if fraction < 0.6:
        return "a large part"
    return "most"


class Narrator:
    def __init__(self, rng: random.Random, query: str) -> None:
        self.rng, self.query = rng, query.strip().rstrip(".")
        self.history: list[tuple[str, int]] = []  # (situation, template index) per narrated turn

    def _pick(self, situation: str, *options: str) -> str:
        """One of `options`, never the template the previous turn used."""
        choices = list(range(len(options)))
        if self.history and self.history[-1][0] == situation and len(choices) > 1:
            choices.remove(self.history[-1][1])
        index = self.rng.choice(choices)
        self.history.append((situation, index))
        return options[index]

    def start(self, where: str, size: str, box: list[int], view: int) -> str:
        q = self.query
        return self._pick(
            "start",
            f"The query asks for \"{q}\". I can see it in the {where} of view {view}; it is {size}. "
            f"I'll start with a box around it, {box}.",
            f"Looking for \"{q}\": it is the {size} region in the {where}. A box {box} on view {view} "
            f"should give the segmenter a good first guess.",
            f"\"{q}\" matches the {size} object in the {where} of the view. Let me box it: {box}.",
            f"I need \"{q}\". There is a {size} object in the {where} that fits; I'll outline it with the box {box}.",
            f"The {size} thing in the {where} is what \"{q}\" describes; a box {box} on view {view} should catch it.",
        )

    def start_clicks(self, where: str, size: str, points: list[list[int]], view: int) -> str:
        q = self.query
        pts = points[0] if len(points) == 1 else points
        return self._pick(
            "start_clicks",
            f"\"{q}\" is the {size} object in the {where} of view {view}. A foreground click on it at {pts} "
            f"should be enough for a first mask.",
            f"I can see \"{q}\" in the {where}. Instead of a box I'll click inside it at {pts}.",
            f"The query points to the {size} object in the {where}. Let me start with a click at {pts} on view {view}.",
            f"\"{q}\" sits in the {where}; a positive click at {pts} marks it for the segmenter.",
        )

    def zoom(self, where: str, size: str, box: list[int]) -> str:
        q = self.query
        return self._pick(
            "zoom",
            f"\"{q}\" is {size} in this image, in the {where}. Zooming in on {box} gives the segmenter more "
            f"pixels to work with.",
            f"The target is only a {size} patch in the {where}. I'll zoom in on {box} before segmenting so its "
            f"outline is clear.",
            f"At this scale \"{q}\" is hard to outline; it sits in the {where}. Zooming into {box} first.",
            f"\"{q}\" covers few pixels here ({size}, in the {where}), so I'll look closer: zoom to {box}.",
        )

    def start_zoomed(self, box: list[int], view: int) -> str:
        return self._pick(
            "start_zoomed",
            f"In the zoomed view {view} the target is clearly visible. Boxing it at {box}.",
            f"Now the target fills much of view {view}; a box {box} around it should segment it well.",
            f"View {view} shows the target up close. I'll segment it with the box {box}.",
            f"Up close in view {view} the outline is easy to follow; box {box}.",
        )

    def next_part(self, where: str, box: list[int], done_id: int) -> str:
        q = self.query
        return self._pick(
            "next_part",
            f"Candidate {done_id} covers one part well, but \"{q}\" also appears in the {where}. "
            f"Segmenting that part next with the box {box}.",
            f"One part is done (candidate {done_id}). Another part of the target is in the {where}; boxing it: {box}.",
            f"Candidate {done_id} fits that piece. The target continues in the {where}, so I'll add it with {box}.",
            f"\"{q}\" has more than one piece: candidate {done_id} has the first, and the next is in the {where}. "
            f"Box {box}.",
        )

    def recognise_wrong(self, cid: int, seen: str | None, toward: str) -> str:
        """The previous candidate landed on `seen` (or something else); the target lies `toward` from
        it ("to its right", "above it"). The next action's own sentence follows."""
        q = self.query
        what = f"the {seen}" if seen else "something else"
        return self._pick(
            "recognise_wrong",
            f"The overlay shows candidate {cid} on {what}, which is not \"{q}\". The right one is {toward}.",
            f"That was the wrong object: candidate {cid} covers {what}. \"{q}\" is the one {toward}.",
            f"Looking at the overlay, candidate {cid} sits on {what} and does not match \"{q}\"; I'll leave it "
            f"and go for the object {toward}.",
            f"Candidate {cid} picked {what}. Re-reading \"{q}\", the target is {toward} instead.",
        )

    def redraw(self, cid: int, problem: str, box: list[int]) -> str:
        """The first prompt gave a poor mask (`problem`: "spill" or "miss"); a clean box replaces it."""
        q = self.query
        if problem == "spill":
            return self._pick(
                "redraw_spill",
                f"Candidate {cid} spreads well beyond \"{q}\": the prompt was too loose. I'll redraw a box tightly "
                f"around the object: {box}.",
                f"The overlay of candidate {cid} takes in a lot of background. Clicks would take long to fix that; "
                f"a new, tighter box {box} is better.",
                f"Candidate {cid} bleeds far past the object's outline. Starting again with the box {box}.")
        return self._pick(
            "redraw_miss",
            f"Candidate {cid} covers only part of \"{q}\": the prompt cut the object off. Redrawing a box around "
            f"all of it: {box}.",
            f"Much of the object is outside candidate {cid}. I'll give the segmenter a box around the whole of "
            f"\"{q}\" instead: {box}.",
            f"The overlay shows candidate {cid} missing large pieces of the target. A fresh box {box} should "
            f"cover it.")

    def add_click(self, cid: int, where: str, missed: float, point: list[int]) -> str:
        q, amount = self.query, amount_words(missed)
        return self._pick(
            "add_click",
            f"Candidate {cid} covers most of it but leaves out {amount} on its {where} side. "
            f"A positive click at {point} should add it.",
            f"The overlay of candidate {cid} misses {amount} of the target toward the {where}. Adding a "
            f"foreground click at {point}.",
            f"Candidate {cid} is too small: {amount} of \"{q}\" in the {where} is not covered. I'll click {point} "
            f"as foreground.",
            f"Part of \"{q}\" is still uncovered near the {where} ({amount} of it). Foreground click at {point}.",
            f"The mask stops short in the {where}; {amount} of the object is outside it. Clicking {point} to include it.",
        )

    def remove_click(self, cid: int, where: str, extra: float, point: list[int]) -> str:
        q, amount = self.query, amount_words(extra)
        spill = "a sliver" if amount == "a thin strip" else amount
        return self._pick(
            "remove_click",
            f"Candidate {cid} spills over onto something that is not the target near its {where}: "
            f"{spill} of the mask is extra. A negative click at {point} should remove it.",
            f"The overlay of candidate {cid} includes background around the {where}. Marking {point} as "
            f"not part of the target.",
            f"Candidate {cid} is too large: the region near its {where} does not belong to \"{q}\". "
            f"Negative click at {point}.",
            f"{spill.capitalize()} of candidate {cid} bleeds past \"{q}\" on the {where}. I'll put a background "
            f"click at {point}.",
            f"The mask reaches beyond the object in the {where}. A negative click at {point} should pull it back.",
        )

    def submit(self, ids: list[int], reason: str) -> str:
        one = len(ids) == 1
        which = f"candidate {ids[0]}" if one else f"candidates {ids}"
        q = self.query
        if reason == "good":
            return self._pick(
                "submit_good",
                f"{which.capitalize()} now {'follows' if one else 'follow'} the outline of \"{q}\" closely. Submitting.",
                f"The overlay matches the target well; I'll submit {which}.",
                f"{which.capitalize()} {'covers' if one else 'cover'} the target with clean edges, so I submit "
                f"{'it' if one else 'them'}.",
                f"That looks right: {which} {'traces' if one else 'trace'} \"{q}\" without spilling over. Done.")
        if reason == "stalled":
            return self._pick(
                "submit_stalled",
                f"More clicks are not improving the mask; {which} is the best so far. Submitting it.",
                f"The last refinements did not help, so I'll stop and submit {which}.",
                f"The outline has stopped improving. Submitting {which}.",
                f"Further edits only shuffle the boundary; {which} is as good as it gets here.")
        if reason == "best":  # the best of what the overlays showed, not claimed to be a clean fit
            return self._pick(
                "submit_best",
                f"Of the masks so far, {which} {'fits' if one else 'fit'} \"{q}\" best; I'll submit "
                f"{'it' if one else 'them'}.",
                f"{which.capitalize()} {'is' if one else 'are'} the closest to the object's outline I have. Submitting.",
                f"I'll stop here and submit {which}, the best match for \"{q}\" so far.")
        if reason == "budget":
            return self._pick("submit_budget", f"Only one turn is left, so I submit {which}.",
                              f"I am out of turns to refine further; submitting {which}.",
                              f"No turns left for more edits; {which} is my answer.")
        return self._pick(
            "submit_absent",
            f"Nothing in the image matches \"{q}\"; I'll submit an empty answer.",
            f"I do not see \"{q}\" anywhere in the image, so the answer is empty.",
            f"I looked over the whole image and there is no \"{q}\" in it. Submitting no mask.",
            f"\"{q}\" is not in this picture, so I submit an empty selection.")
