"""The oracle expert: a scripted policy that reads the ground truth.

It is the trajectory synthesizer and the toolbox's upper bound. Per part of the target (largest
first): zoom in when the part is small, box it, then click where the error is deepest (the click
simulation of interactive segmentation benchmarks: the interior-most point of the largest missed or
spurious region, positive or negative), move on when the part is good or stops improving, and
submit the union. Ignore pixels are don't-care throughout.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import cv2
import numpy as np

from rsagent.core.mask import GroundTruth, deepest_point, iou, mask_box
from rsagent.core.view import View
from rsagent.env.episode import Episode
from rsagent.policies.base import Policy, format_answer
from rsagent.policies.narration import Narrator, place_in, size_words


@dataclass(frozen=True)
class OracleConfig:
    target_iou: float = 0.92  # a part at this IoU is done
    patience: int = 3  # refinements in a row without gain before moving on
    min_gain: float = 0.005
    box_jitter: float = 0.0  # std of each box edge's noise, as a fraction of the box size
    zoom_below: float = 0.25  # zoom when the part's long side is below this fraction of the image's
    zoom_context: float = 2.0  # margin on each side of a zoomed part, as a fraction of its size
    min_part_fraction: float = 0.05  # smaller parts of a multi-part target are left out
    max_parts: int = 4
    seed: int = 0


@dataclass
class _Part:
    mask: np.ndarray  # full-size bool
    dont_care: np.ndarray  # ignore pixels and the other parts
    box: tuple[float, float, float, float]
    best_id: int | None = None  # what gets submitted
    best_iou: float = -1.0
    current_id: int | None = None  # the head of the refinement chain: clicks accumulate along it
    stalls: int = 0
    view: int = 0


@dataclass
class _Plan:
    parts: list[_Part]
    narrator: Narrator
    rng: random.Random
    active: int = 0
    last_candidate: int | None = None  # candidate already scored
    zoom_pending: bool = False
    done_ids: list[int] = field(default_factory=list)


def _split_parts(gt: np.ndarray, ignore: np.ndarray | None, cfg: OracleConfig) -> list[_Part]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(gt.astype(np.uint8), connectivity=8)
    total = int(gt.sum())
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    keep = [i for i in order if stats[i, cv2.CC_STAT_AREA] >= max(4, cfg.min_part_fraction * total)]
    keep = keep[: cfg.max_parts] or order[:1]
    base_ignore = np.zeros_like(gt) if ignore is None else ignore
    parts = []
    for i in keep:
        mask = labels == i
        parts.append(_Part(mask=mask, dont_care=base_ignore | (gt & ~mask), box=mask_box(mask)))  # type: ignore[arg-type]
    return parts


class OraclePolicy(Policy):
    name = "oracle"

    def __init__(self, config: OracleConfig = OracleConfig()) -> None:
        self.config = config
        self._plans: WeakKeyDictionary[Episode, _Plan] = WeakKeyDictionary()

    @property
    def identifier(self) -> str:
        c = self.config
        return f"oracle(target_iou={c.target_iou}, jitter={c.box_jitter}, zoom_below={c.zoom_below}, seed={c.seed})"

    @property
    def settings(self) -> dict:
        return dataclasses.asdict(self.config)

    def act(self, episodes: Sequence[Episode]) -> list[str]:
        return [self._act_one(ep) for ep in episodes]

    # --- planning ------------------------------------------------------------------------------
    def _plan(self, ep: Episode) -> _Plan:
        if ep not in self._plans:
            gt = ep.task.gt
            if gt is None:
                raise ValueError(f"the oracle policy needs a ground-truth mask (sample {ep.task.sample_id})")
            valid = gt.mask if gt.ignore is None else gt.mask & ~gt.ignore
            rng = random.Random(zlib.crc32(f"{self.config.seed}:{ep.task.sample_id}".encode()))
            parts = _split_parts(valid, gt.ignore, self.config) if valid.any() else []
            self._plans[ep] = _Plan(parts=parts, narrator=Narrator(rng, ep.task.query), rng=rng)
        return self._plans[ep]

    def _act_one(self, ep: Episode) -> str:
        plan = self._plan(ep)
        if not plan.parts:
            return format_answer(plan.narrator.submit([], "absent"), "submit", {"mask_ids": []})
        if ep.turns_left <= 1:
            return self._submit(ep, plan, "budget")
        if plan.zoom_pending:  # the last turn zoomed in: segment the part in the new view
            plan.zoom_pending = False
            return self._segment_part(ep, plan, zoomed=True)
        self._score_latest(ep, plan)
        part = plan.parts[plan.active]
        if part.best_id is None:
            return self._start_part(ep, plan)
        remaining = len(plan.parts) - plan.active - 1
        good = part.best_iou >= self.config.target_iou
        stalled = part.stalls >= self.config.patience
        if good or stalled or ep.turns_left <= 1 + remaining:
            plan.done_ids.append(part.best_id)
            if remaining and ep.turns_left >= 2:  # a segment for the next part, then submit
                plan.active += 1
                return self._start_part(ep, plan)
            return self._submit(ep, plan, "good" if good else "stalled")
        return self._click(ep, plan, part)

    def _score_latest(self, ep: Episode, plan: _Plan) -> None:
        """Fold the latest candidate into the active part's best, counting stalls."""
        if not ep.candidates or ep.candidates[-1].id == plan.last_candidate:
            return
        cand = ep.candidates[-1]
        plan.last_candidate = cand.id
        part = plan.parts[plan.active]
        score = _part_iou(ep.mask(cand.id), part)
        if score > part.best_iou + self.config.min_gain:
            part.stalls = 0
        elif part.best_id is not None:
            part.stalls += 1
        part.current_id = cand.id
        if score > part.best_iou:
            part.best_id, part.best_iou = cand.id, score

    # --- actions -------------------------------------------------------------------------------
    def _start_part(self, ep: Episode, plan: _Plan) -> str:
        part = plan.parts[plan.active]
        h, w = ep.image_shape
        long_side = max(part.box[2] - part.box[0], part.box[3] - part.box[1])
        remaining = len(plan.parts) - plan.active - 1
        box = self._zoom_box(part, (h, w))
        # a zoom that keeps most of the image enlarges nothing: segment on the full view instead
        worth = (box[2] - box[0]) * (box[3] - box[1]) < 0.5 * h * w
        if long_side < self.config.zoom_below * max(h, w) and worth and ep.turns_left >= 3 + remaining:
            return self._zoom(ep, plan, part, box)
        return self._segment_part(ep, plan, zoomed=False)

    def _zoom_box(self, part: _Part, shape: tuple[int, int]) -> list[int]:
        """The part with `zoom_context` of its size around it on each side, clipped to the image."""
        h, w = shape
        x0, y0, x1, y1 = part.box
        side = max(max(x1 - x0, y1 - y0) * (1 + 2 * self.config.zoom_context), 32.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return [int(np.clip(np.floor(cx - side / 2), 0, w - 1)), int(np.clip(np.floor(cy - side / 2), 0, h - 1)),
                int(np.clip(np.ceil(cx + side / 2), 1, w)), int(np.clip(np.ceil(cy + side / 2), 1, h))]

    def _zoom(self, ep: Episode, plan: _Plan, part: _Part, box: list[int]) -> str:
        h, w = ep.image_shape
        x0, y0, x1, y1 = part.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        plan.zoom_pending = True
        box = ep.to_frame_box(ep.views[0], ep.views[0].box_from_image(box))
        where = place_in((0, 0, w, h), cx, cy)
        size = size_words(part.mask.sum() / (h * w))
        return format_answer(plan.narrator.zoom(where, size, box), "zoom_in", {"box": box, "view": 0})

    def _segment_part(self, ep: Episode, plan: _Plan, zoomed: bool) -> str:
        part = plan.parts[plan.active]
        view = ep.views[ep.current_view] if zoomed else ep.views[0]
        part.view = view.id
        box = ep.to_frame_box(view, self._view_box(view, self._part_box(ep, plan, part)))
        h, w = ep.image_shape
        cx, cy = (part.box[0] + part.box[2]) / 2, (part.box[1] + part.box[3]) / 2
        if zoomed:
            think = plan.narrator.start_zoomed(box, view.id)
        elif plan.done_ids:
            think = plan.narrator.next_part(place_in((0, 0, w, h), cx, cy), box, plan.done_ids[-1])
        else:
            think = plan.narrator.start(place_in((0, 0, w, h), cx, cy), size_words(part.mask.sum() / (h * w)),
                                        box, view.id)
        return format_answer(think, "segment", {"box": box, "view": view.id})

    def _click(self, ep: Episode, plan: _Plan, part: _Part) -> str:
        view = ep.views[part.view]
        cid = part.current_id
        cand = ep.mask(cid)  # type: ignore[arg-type]
        care = ~part.dont_care
        missed = view.mask_from_image(part.mask & ~cand & care)
        spurious = view.mask_from_image(cand & ~part.mask & care)
        (fx, fy), fdist = deepest_point(missed) if missed.any() else ((0, 0), 0.0)
        (bx, by), bdist = deepest_point(spurious) if spurious.any() else ((0, 0), 0.0)
        if fdist == 0 and bdist == 0:
            plan.parts[plan.active].stalls = self.config.patience  # nothing left to fix at this scale
            return self._act_one(ep)
        positive = fdist >= bdist
        point = [fx, fy] if positive else [bx, by]
        img_pt = view.points_to_image(np.array([point]))[0]
        where = place_in(part.box, float(img_pt[0]), float(img_pt[1]))
        region = missed if positive else spurious
        fraction = region.sum() / max(1, view.mask_from_image(part.mask).sum())
        say = plan.narrator.add_click if positive else plan.narrator.remove_click
        point = ep.to_frame_points(view, [point])[0]
        think = say(cid, where, fraction, point)  # type: ignore[arg-type]
        return format_answer(think, "refine", {"mask_id": cid, "points": [point],
                                               "labels": [1 if positive else 0], "view": view.id})

    def _submit(self, ep: Episode, plan: _Plan, reason: str) -> str:
        self._score_latest(ep, plan)
        ids = best_union(ep, plan.done_ids + [p.best_id for p in plan.parts[plan.active:] if p.best_id is not None])
        return format_answer(plan.narrator.submit(ids, reason if ids else "absent"), "submit", {"mask_ids": ids})

    # --- geometry ------------------------------------------------------------------------------
    def _part_box(self, ep: Episode, plan: _Plan, part: _Part) -> tuple[float, float, float, float]:
        """The box (image pixels) a part is first segmented with: its tight box, jittered if configured.
        Synthesis overrides it to open with a deliberately imperfect box."""
        return self._jitter(part.box, plan.rng, ep.image_shape)

    def _jitter(self, box, rng: random.Random, shape: tuple[int, int]):
        if self.config.box_jitter <= 0:
            return box
        h, w = shape
        bw, bh = box[2] - box[0], box[3] - box[1]
        s = self.config.box_jitter
        x0 = box[0] + rng.gauss(0, s) * bw
        y0 = box[1] + rng.gauss(0, s) * bh
        x1 = box[2] + rng.gauss(0, s) * bw
        y1 = box[3] + rng.gauss(0, s) * bh
        x0, x1 = sorted((float(np.clip(x0, 0, w)), float(np.clip(x1, 0, w))))
        y0, y1 = sorted((float(np.clip(y0, 0, h)), float(np.clip(y1, 0, h))))
        return box if x1 - x0 < 2 or y1 - y0 < 2 else (x0, y0, x1, y1)

    @staticmethod
    def _view_box(view: View, box) -> list[int]:
        vb = view.box_from_image(box)
        w, h = view.size
        x0 = int(np.clip(np.floor(vb[0]), 0, w - 1))
        y0 = int(np.clip(np.floor(vb[1]), 0, h - 1))
        return [x0, y0, int(np.clip(np.ceil(vb[2]), x0 + 1, w)), int(np.clip(np.ceil(vb[3]), y0 + 1, h))]


def _part_iou(mask: np.ndarray, part: _Part) -> float:
    """IoU with one part, the other parts and ignore pixels being don't-care."""
    return iou(mask, GroundTruth(part.mask, part.dont_care))


def best_union(ep: Episode, ids: Sequence[int]) -> list[int]:
    """Greedily add candidates (in the order given) while each raises the IoU of the union with the
    target: what the expert submits."""
    gt = ep.task.gt
    assert gt is not None
    chosen: list[int] = []
    union = np.zeros(ep.image_shape, bool)
    best = iou(union, gt)  # 0 for the empty union: a plan exists only for a non-empty target
    for cid in dict.fromkeys(ids):
        trial = union | ep.mask(cid)
        score = iou(trial, gt)
        if score > best:
            chosen.append(cid)
            union, best = trial, score
    return chosen
