"""The synthesis expert: the oracle, opening each episode with a move drawn from a mix, some of them
deliberate mistakes that the next turn recognises and repairs, so SFT data teaches recovery.

Openings: a clean box; a jittered, too-tight or too-loose box (later clicks repair it); clicks
only; or the wrong object first (a neighbouring instance, or without an instance list a region of
the target's size elsewhere), which the next turn recognises from the overlay and replaces. After
the opening the oracle's own plan goes on: zoom for small parts, corrective clicks, submit the best.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np

from rsagent.core.mask import deepest_point
from rsagent.env.episode import Episode
from rsagent.policies.base import format_answer
from rsagent.policies.narration import direction_words, place_in, size_words
from rsagent.policies.oracle import OracleConfig, OraclePolicy, _Part, _part_iou, _Plan

Box = tuple[float, float, float, float]

OPENINGS = ("clean_box", "jittered_box", "tight_box", "loose_box", "clicks", "wrong_neighbour", "wrong_region")
BOX_OPENINGS = ("jittered_box", "tight_box", "loose_box")
WRONG_OPENINGS = ("wrong_neighbour", "wrong_region")
REDRAW_BELOW = 0.65  # a first mask this poor (IoU with its part) is replaced by a clean box, not clicked at
DEFAULT_MIX = {"clean_box": 0.25, "jittered_box": 0.15, "tight_box": 0.1, "loose_box": 0.1, "clicks": 0.1,
               "wrong_neighbour": 0.3}


@dataclass(frozen=True)
class Opening:
    """How one episode starts. `wrong_box` (image pixels) and `wrong_label` (its category, e.g. "cup")
    describe the wrong object for the wrong_* openings."""

    kind: str = "clean_box"
    wrong_box: Box | None = None
    wrong_label: str | None = None


def draw_opening(rng: random.Random, mix: dict[str, float], has_neighbour: bool) -> str:
    """An opening kind from `mix` (weights); wrong_neighbour becomes wrong_region without a neighbour."""
    kinds = [k for k, w in mix.items() if w > 0]
    kind = rng.choices(kinds, weights=[mix[k] for k in kinds])[0]
    return "wrong_region" if kind == "wrong_neighbour" and not has_neighbour else kind


def perturbed_box(kind: str, box: Box, shape: tuple[int, int], rng: random.Random) -> Box:
    """An imperfect first box: jittered edges, shrunk inside the object, or grown past it."""
    h, w = shape
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if kind == "jittered_box":
        x0, x1 = x0 + rng.gauss(0, 0.12) * bw, x1 + rng.gauss(0, 0.12) * bw
        y0, y1 = y0 + rng.gauss(0, 0.12) * bh, y1 + rng.gauss(0, 0.12) * bh
    elif kind == "tight_box":
        x0, x1 = x0 + rng.uniform(0.1, 0.22) * bw, x1 - rng.uniform(0.1, 0.22) * bw
        y0, y1 = y0 + rng.uniform(0.1, 0.22) * bh, y1 - rng.uniform(0.1, 0.22) * bh
    elif kind == "loose_box":
        x0, x1 = x0 - rng.uniform(0.15, 0.4) * bw, x1 + rng.uniform(0.15, 0.4) * bw
        y0, y1 = y0 - rng.uniform(0.15, 0.4) * bh, y1 + rng.uniform(0.15, 0.4) * bh
    x0, x1 = sorted((float(np.clip(x0, 0, w)), float(np.clip(x1, 0, w))))
    y0, y1 = sorted((float(np.clip(y0, 0, h)), float(np.clip(y1, 0, h))))
    return box if x1 - x0 < 2 or y1 - y0 < 2 else (x0, y0, x1, y1)


def elsewhere_box(target: Box, shape: tuple[int, int]) -> Box | None:
    """A box of the target's size in a mirrored place that overlaps it little (a wrong region), or None."""
    h, w = shape
    x0, y0, x1, y1 = target
    bw, bh = x1 - x0, y1 - y0
    if bw > 0.45 * w and bh > 0.45 * h:
        return None  # a large target leaves no room for a plausible wrong region
    for mx, my in ((True, False), (False, True), (True, True)):
        nx0 = w - x1 if mx else x0
        ny0 = h - y1 if my else y0
        cand = (nx0, ny0, nx0 + bw, ny0 + bh)
        ix = max(0.0, min(cand[2], x1) - max(cand[0], x0))
        iy = max(0.0, min(cand[3], y1) - max(cand[1], y0))
        if ix * iy <= 0.1 * bw * bh:
            return cand
    return None


def _where_phrase(where: str) -> str:
    """'left' -> 'on the left', 'top-right' -> 'at the top-right', 'centre' -> 'in the centre'."""
    if where == "centre":
        return "in the centre"
    return f"on the {where}" if where in ("left", "right") else f"at the {where}"


@dataclass
class _OpeningState:
    opening: Opening
    first_segment_done: bool = False
    wrong_id: int | None = None  # the wrong candidate, once made
    recognised: bool = False
    checked: bool = False  # the imperfect first mask was looked at (and redrawn if poor)


class ExpertPolicy(OraclePolicy):
    """The oracle with per-sample openings (`assign`), for synthesis."""

    name = "expert"

    def __init__(self, config: OracleConfig = OracleConfig()) -> None:
        super().__init__(config)
        self._openings: dict[str, Opening] = {}
        self._states: WeakKeyDictionary[Episode, _OpeningState] = WeakKeyDictionary()
        self._first_kind: str | None = None  # the opening of the segment call being written (one at a time)
        self._mistakes: dict[str, list[int]] = {}  # sample id -> turns written wrong on purpose (1-based)

    @property
    def identifier(self) -> str:
        return "expert+" + super().identifier

    def assign(self, sample_id: str, opening: Opening) -> None:
        self._openings[sample_id] = opening
        self._mistakes.pop(sample_id, None)

    def mistakes(self, sample_id: str) -> list[int]:
        """The turns of the sample's episode written wrong on purpose (the wrong_* openings' first segment):
        context for the recovery that follows, never something to imitate (no SFT loss on them)."""
        return list(self._mistakes.get(sample_id, ()))

    def opening(self, sample_id: str) -> Opening:
        return self._openings.get(sample_id, Opening())

    def _state(self, ep: Episode) -> _OpeningState:
        if ep not in self._states:
            self._states[ep] = _OpeningState(self._openings.get(ep.task.sample_id, Opening()))
        return self._states[ep]

    def act(self, episodes: Sequence[Episode]) -> list[str]:
        return [self._act_opening(ep) for ep in episodes]

    def _act_opening(self, ep: Episode) -> str:
        plan, state = self._plan(ep), self._state(ep)
        kind = state.opening.kind
        if kind in WRONG_OPENINGS and plan.parts and state.opening.wrong_box is not None and ep.turns_left >= 4:
            if not ep.turns:
                self._mistakes[ep.task.sample_id] = [1]  # the episode's first turn
                return self._wrong_segment(ep, plan, state)
        if state.wrong_id is None and kind in WRONG_OPENINGS and ep.turns and ep.candidates and not state.recognised:
            state.wrong_id = ep.candidates[-1].id
        if state.wrong_id is not None and not state.recognised:
            state.recognised = True
            plan.last_candidate = state.wrong_id  # never scored or refined as part of the target
            return self._with_prefix(self._act_one(ep), self._recognition(ep, plan, state))
        if state.first_segment_done and not state.checked and ep.candidates and ep.turns_left >= 3 \
                and kind in (*BOX_OPENINGS, "clicks"):
            state.checked = True
            part = plan.parts[0]
            cand = ep.candidates[-1]
            if _part_iou(ep.mask(cand.id), part) < REDRAW_BELOW:
                self._score_latest(ep, plan)
                return self._redraw(ep, plan, part, cand.id)
        return self._act_one(ep)

    def _redraw(self, ep: Episode, plan: _Plan, part: _Part, cid: int) -> str:
        """Replace a poor first mask with a segment from the part's clean box."""
        view = ep.views[part.view]
        box = ep.to_frame_box(view, self._view_box(view, part.box))
        care = ~part.dont_care
        cand = ep.mask(cid)
        spill = int((cand & ~part.mask & care).sum()) >= int((part.mask & ~cand & care).sum())
        think = plan.narrator.redraw(cid, "spill" if spill else "miss", box)
        return format_answer(think, "segment", {"box": box, "view": view.id})

    # --- the wrong object first ------------------------------------------------------------------
    def _wrong_segment(self, ep: Episode, plan: _Plan, state: _OpeningState) -> str:
        h, w = ep.image_shape
        view = ep.views[0]
        wrong = state.opening.wrong_box
        assert wrong is not None
        box = ep.to_frame_box(view, self._view_box(view, wrong))
        cx, cy = (wrong[0] + wrong[2]) / 2, (wrong[1] + wrong[3]) / 2
        size = size_words((wrong[2] - wrong[0]) * (wrong[3] - wrong[1]) / (h * w))
        think = plan.narrator.start(place_in((0, 0, w, h), cx, cy), size, box, view.id)
        return format_answer(think, "segment", {"box": box, "view": view.id})

    def _recognition(self, ep: Episode, plan: _Plan, state: _OpeningState) -> str:
        """Name what the wrong candidate covers, and where the target lies seen from it (both visible:
        two objects in the same third of the image are still told apart)."""
        h, w = ep.image_shape
        wrong = state.opening.wrong_box
        assert wrong is not None
        seen = state.opening.wrong_label
        if seen:
            seen = f"{seen} {_where_phrase(place_in((0, 0, w, h), (wrong[0] + wrong[2]) / 2, (wrong[1] + wrong[3]) / 2))}"
        toward = direction_words(wrong, plan.parts[0].box)
        return plan.narrator.recognise_wrong(state.wrong_id, seen, toward)  # type: ignore[arg-type]

    @staticmethod
    def _with_prefix(answer: str, prefix: str) -> str:
        assert answer.startswith("<think>")
        return f"<think>{prefix} {answer[len('<think>'):]}"

    # --- imperfect first prompts -------------------------------------------------------------------
    def _first_segment(self, ep: Episode, plan: _Plan) -> str | None:
        """Which opening applies to this segment call (only the episode's first segment of part 0)."""
        state = self._state(ep)
        if state.first_segment_done or plan.active != 0:
            return None
        state.first_segment_done = True
        return state.opening.kind

    def _part_box(self, ep: Episode, plan: _Plan, part: _Part) -> Box:
        kind = self._first_kind
        if kind in BOX_OPENINGS:
            return perturbed_box(kind, part.box, ep.image_shape, plan.rng)
        return super()._part_box(ep, plan, part)

    def _segment_part(self, ep: Episode, plan: _Plan, zoomed: bool) -> str:
        self._first_kind = self._first_segment(ep, plan)
        if self._first_kind != "clicks":
            return super()._segment_part(ep, plan, zoomed)
        part = plan.parts[plan.active]
        view = ep.views[ep.current_view] if zoomed else ep.views[0]
        part.view = view.id
        (px, py), _ = deepest_point(view.mask_from_image(part.mask))
        points = ep.to_frame_points(view, [[px, py]])
        h, w = ep.image_shape
        cx, cy = (part.box[0] + part.box[2]) / 2, (part.box[1] + part.box[3]) / 2
        think = plan.narrator.start_clicks(place_in((0, 0, w, h), cx, cy), size_words(part.mask.sum() / (h * w)),
                                           points, view.id)
        return format_answer(think, "segment", {"points": points, "labels": [1], "view": view.id})
