"""One segmentation episode as an explicit state machine: answer text in, observation out.

The environment works in the image's own pixels; each view maps its pixels to them, and the
policy's coordinate frame (core.frames) maps the numbers it writes to the view it was shown. A
malformed or invalid answer becomes an error observation and uses up its turn; it never raises.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from rsagent.core.frames import Frame, PixelFrame
from rsagent.core.mask import GroundTruth, encode_rle, intersection_union, iou, iou_from_counts, mask_box
from rsagent.core.trajectory import Candidate, ImageRef, Observation, Trajectory, Turn, chat_messages
from rsagent.core.view import View
from rsagent.env.parse import parse_answer
from rsagent.env.prompt import system_prompt, user_text
from rsagent.env.render import render_view
from rsagent.env.tools import TOOLS, ToolCallError, validate_call
from rsagent.segmenters.base import MaskPrompt, Segmenter

MAX_ERROR_CHARS = 300
PROTOCOL_HINT = ('Answer with <think>...</think> then exactly one '
                 '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.')


@dataclass(frozen=True)
class EpisodeConfig:
    max_turns: int = 8
    zoom_long_side: int | None = None  # long side of a zoomed view; None: the full image's long side
    max_zoom: float = 8.0  # largest magnification of a zoomed view
    min_zoom_side: int = 8  # a zoom box smaller than this (image pixels) is widened around its centre
    tools: tuple[str, ...] = tuple(TOOLS)

    def to_dict(self) -> dict:
        return {"max_turns": self.max_turns, "zoom_long_side": self.zoom_long_side,
                "max_zoom": self.max_zoom, "min_zoom_side": self.min_zoom_side, "tools": list(self.tools)}


@dataclass(frozen=True)
class EpisodeTask:
    """What an episode is about; `gt` is only read for per-turn IoU and by the oracle policy."""

    image: np.ndarray
    query: str
    sample_id: str = "sample"
    gt: GroundTruth | None = None
    image_path: str | None = None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def image_key(image: np.ndarray) -> str:
    """Content hash: episodes on the same image share the segmenter's cached encodings."""
    return hashlib.blake2b(image.tobytes(), digest_size=16, person=str(image.shape).encode()[:16]).hexdigest()


class Episode:
    def __init__(self, task: EpisodeTask, segmenter: Segmenter, config: EpisodeConfig = EpisodeConfig(),
                 frame: Frame = PixelFrame()) -> None:
        if task.image.ndim != 3 or task.image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {task.image.shape}")
        if task.gt is not None and task.gt.shape != task.image.shape[:2]:
            raise ValueError(f"ground truth {task.gt.shape} does not match the image {task.image.shape[:2]}")
        self.task, self.segmenter, self.config, self.frame = task, segmenter, config, frame
        h, w = task.image.shape[:2]
        self.views: list[View] = [View(0, (0, 0, w, h), frame.display_size(w, h))]
        self.candidates: list[Candidate] = []
        self.turns: list[Turn] = []
        self.current_view = 0
        self.done = False
        self.final: dict = {}
        self._masks: dict[int, np.ndarray] = {}  # candidate id -> full-size bool mask
        self._logits: dict[int, tuple[int, np.ndarray]] = {}  # candidate id -> (view id, low-res logits)
        self._pixels: dict[int, np.ndarray] = {}  # view id -> rendered view pixels
        self._key = image_key(task.image)
        self._tools = [TOOLS[name] for name in config.tools]
        self.system_prompt = system_prompt(self._tools, config.max_turns, frame.rule)
        self.user_text = user_text(task.query, frame.describe(self.views[0].size))
        self._started = time.perf_counter()

    # --- reading the state -------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int]:
        return self.task.image.shape[:2]  # type: ignore[return-value]

    @property
    def turns_left(self) -> int:
        return self.config.max_turns - len(self.turns)

    def mask(self, candidate_id: int) -> np.ndarray:
        return self._masks[candidate_id]

    def messages(self) -> list[dict]:
        """The conversation so far (see core.trajectory.chat_messages); images as `ImageRef`s."""
        return chat_messages(self.system_prompt, self.user_text, self.turns)

    def view_pixels(self, view_id: int) -> np.ndarray:
        if view_id not in self._pixels:
            self._pixels[view_id] = self.views[view_id].render(self.task.image)
        return self._pixels[view_id]

    def render(self, ref: ImageRef) -> np.ndarray:
        view = self.views[ref.view_id]
        return render_view(self.task.image, view, [(m, self._masks[m]) for m in ref.mask_ids],
                           pixels=self.view_pixels(view.id))

    def answer(self) -> np.ndarray:
        """The mask that would be scored now: the submitted union, else the latest candidate, else empty."""
        if "mask_ids" in self.final:
            return self._union(self.final["mask_ids"])
        if self.candidates:
            return self._masks[self.candidates[-1].id]
        return np.zeros(self.image_shape, bool)

    def _union(self, ids: list[int]) -> np.ndarray:
        out = np.zeros(self.image_shape, bool)
        for i in ids:
            out |= self._masks[i]
        return out

    # --- the state machine -------------------------------------------------------------------
    def step(self, answer: str) -> Observation:
        """Apply one assistant answer; returns the tool observation (an error text if invalid)."""
        if self.done:
            raise RuntimeError("the episode is over")
        t0 = time.perf_counter()
        parsed = parse_answer(answer)
        turn = Turn(index=len(self.turns) + 1, assistant=answer if isinstance(answer, str) else repr(answer),
                    think=parsed.think, tool_call=parsed.call, error=parsed.error,
                    format_ok=parsed.format_ok, observation=Observation(""),
                    error_kind=None if parsed.error is None else "format")
        if parsed.call is not None:
            try:
                args = validate_call(parsed.call["name"], parsed.call["arguments"], self.config.tools)
            except ToolCallError as exc:
                turn.error, turn.error_kind = str(exc), "arguments"
            except (RecursionError, TypeError, OverflowError) as exc:  # pathological but parseable input
                turn.error, turn.error_kind = f"invalid arguments ({type(exc).__name__})", "arguments"
            else:
                try:
                    turn.observation = getattr(self, f"_tool_{parsed.call['name']}")(args, turn)
                except ToolCallError as exc:  # semantic checks: ids, views, coordinates
                    turn.error, turn.error_kind = str(exc), "state"
        if turn.error is not None:
            turn.error = _clip(turn.error)  # it goes into the model's next prompt
            turn.format_ok = False
            turn.observation = Observation(f"Error: {turn.error}. {PROTOCOL_HINT}")
        self.turns.append(turn)
        if not self.done and self.turns_left <= 0:
            self._finish(reason="budget")
            turn.observation.text += self._budget_note()
        elif not self.done:
            turn.observation.text += f"\n({self.turns_left} turn{'s' if self.turns_left != 1 else ''} left)"
        if self.task.gt is not None:
            turn.answer_iou = iou(self.answer(), self.task.gt)
        turn.seconds["tool"] = time.perf_counter() - t0
        return turn.observation

    def fail(self, error: str) -> None:
        """End the episode because something outside the protocol broke (policy or segmenter crash)."""
        self.final = {"mask_ids": [], "reason": "failed", "error": error}
        self.done = True

    def _finish(self, reason: str, mask_ids: list[int] | None = None) -> None:
        if mask_ids is None:
            mask_ids = [self.candidates[-1].id] if self.candidates else []
        self.final = {"mask_ids": mask_ids, "reason": reason, "error": None}
        self.done = True

    def _budget_note(self) -> str:
        ids = self.final["mask_ids"]
        tail = f"candidate {ids[0]} is the final answer" if ids else "no candidate, so the answer is empty"
        return f"\nTurn budget exhausted: {tail}."

    # --- tools ---------------------------------------------------------------------------------
    def _view_arg(self, args: dict) -> View:
        view_id = args.get("view", self.current_view)
        if not 0 <= view_id < len(self.views):
            raise ToolCallError(f"view {view_id} does not exist; views are 0..{len(self.views) - 1}")
        return self.views[view_id]

    def _to_view(self, view: View, args: dict) -> dict:
        """Check the call's coordinates against the frame's bounds; return them in the view's pixels."""
        shown = self.frame.describe(view.size)
        if "box" in args:
            if not self.frame.contains_box(args["box"], view.size):
                w, h = self.frame.extent(view.size)
                raise ToolCallError(f"box {args['box']} is outside view {view.id}, which is {shown} "
                                    f"(x in 0..{w}, y in 0..{h})")
            args = {**args, "box": self.frame.box_to_view(args["box"], view.size)}
        if "points" in args:
            if not self.frame.contains_points(args["points"], view.size):
                mx, my = self.frame.point_max(view.size)
                raise ToolCallError(f"a point is outside view {view.id}, which is {shown} "
                                    f"(x in 0..{mx}, y in 0..{my})")
            args = {**args, "points": self.frame.points_to_view(args["points"], view.size)}
        return args

    def to_frame_box(self, view: View, box) -> list[int]:
        """A box in `view`'s pixels as the policy writes it (its frame's integers)."""
        return self.frame.box_from_view(box, view.size)

    def to_frame_points(self, view: View, points) -> list[list[int]]:
        return self.frame.points_from_view(np.asarray(points), view.size).tolist()

    def _candidate_id(self, mask_id: int) -> int:
        if mask_id not in self._masks:
            known = ", ".join(str(c.id) for c in self.candidates) or "none yet"
            raise ToolCallError(f"candidate {mask_id} does not exist (candidates: {known})")
        return mask_id

    def _tool_segment(self, args: dict, turn: Turn) -> Observation:
        view = self._view_arg(args)
        args = self._to_view(view, args)
        prompt = {}
        if "box" in args:
            prompt["box"] = list(view.box_to_image(tuple(args["box"])))
        if "points" in args:
            prompt["points"] = view.points_to_image(np.array(args["points"])).tolist()
            prompt["labels"] = list(args["labels"])
        return self._run_segmenter(view, prompt, None, turn, tool="segment")

    def _tool_refine(self, args: dict, turn: Turn) -> Observation:
        parent = self._candidate_id(args["mask_id"])
        view = self._view_arg(args)
        args = self._to_view(view, args)
        base = next(c for c in self.candidates if c.id == parent).prompt
        prompt = {k: list(v) for k, v in base.items()}
        prompt["points"] = prompt.get("points", []) + view.points_to_image(np.array(args["points"])).tolist()
        prompt["labels"] = prompt.get("labels", []) + list(args["labels"])
        return self._run_segmenter(view, prompt, parent, turn, tool="refine")

    def _tool_zoom_in(self, args: dict, turn: Turn) -> Observation:
        src = self._view_arg(args)
        args = self._to_view(src, args)
        crop = self._zoom_crop(src.box_to_image(tuple(args["box"])))
        h, w = self.image_shape
        target = self.config.zoom_long_side or max(h, w)
        natural = View.zoom(len(self.views), crop, target, self.config.max_zoom)
        view = View(natural.id, crop, self.frame.display_size(*natural.size))
        self.views.append(view)
        self.current_view = view.id
        turn.view_id = view.id
        region = self.to_frame_box(src, src.box_from_image(crop))
        return Observation(
            f"View {view.id}: region {region} of view {src.id}, enlarged {view.scale[0] / src.scale[0]:.2f}x "
            f"and shown at {self.frame.describe(view.size)}. Coordinates with \"view\": {view.id} "
            f"refer to this image.", [ImageRef(view.id)])

    def _zoom_crop(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        h, w = self.image_shape
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        side = self.config.min_zoom_side
        if x1 - x0 < side:
            x0 = max(0, min(w - side, (x0 + x1 - side) // 2)); x1 = min(w, x0 + side)
        if y1 - y0 < side:
            y0 = max(0, min(h - side, (y0 + y1 - side) // 2)); y1 = min(h, y0 + side)
        return (max(0, x0), max(0, y0), min(w, x1), min(h, y1))

    def _tool_submit(self, args: dict, turn: Turn) -> Observation:
        ids = [self._candidate_id(i) for i in args["mask_ids"]]
        self._finish(reason="submit", mask_ids=ids)
        area = int(self._union(ids).sum())
        what = f"candidates {ids}" if ids else "no candidate (target absent)"
        return Observation(f"Submitted {what}; final mask area {area} pixels "
                           f"({100 * area / (self.image_shape[0] * self.image_shape[1]):.2f}% of the image). Episode over.")

    def _run_segmenter(self, view: View, prompt: dict, parent: int | None, turn: Turn, tool: str) -> Observation:
        """Call the segmenter on `view` with a prompt held in image pixels; record a new candidate."""
        self.segmenter.set_image(self.view_pixels(view.id), key=(self._key, view.box, view.size))
        box = None
        if "box" in prompt:
            vb = view.box_from_image(tuple(prompt["box"]))
            box = (max(0.0, vb[0]), max(0.0, vb[1]), min(view.size[0], vb[2]), min(view.size[1], vb[3]))
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                box = None  # the prompt's box lies outside this view: clicks and the mask prompt lead
        points = labels = None
        if prompt.get("points"):
            pts = view.points_from_image(np.array(prompt["points"]))
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < view.size[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < view.size[1])
            points, labels = pts[inside], np.array(prompt["labels"])[inside]
        mask_prompt = None
        if parent is not None:
            logit_view, logits = self._logits.get(parent, (None, None))
            mask_prompt = MaskPrompt(view.mask_from_image(self._masks[parent]),
                                     logits if logit_view == view.id else None)
        # Several masks only for an ambiguous prompt (one click, or a box alone), as in SAM's interactive use.
        n_prompts = (box is not None) + (0 if points is None else len(points))
        multimask = mask_prompt is None and n_prompts <= 1
        pred = self.segmenter.predict(box=box, points=points, labels=labels, mask_prompt=mask_prompt,
                                      multimask=multimask)
        best = int(np.argmax(pred.scores))
        full = view.mask_to_image(pred.masks[best], self.image_shape)
        cid = (self.candidates[-1].id + 1) if self.candidates else 1
        tight = mask_box(full)
        self.candidates.append(Candidate(
            id=cid, rle=encode_rle(full), view_id=view.id, turn=turn.index, tool=tool, parent=parent,
            prompt=prompt, score=float(pred.scores[best]), area=int(full.sum()),
            box=None if tight is None else list(tight)))
        self._masks[cid] = full
        if pred.logits is not None:
            self._logits[cid] = (view.id, pred.logits[best])
        self.current_view = view.id
        turn.candidate_id = cid
        return Observation(self._describe(cid, view, parent), [ImageRef(view.id, (cid,))])

    def _describe(self, cid: int, view: View, parent: int | None) -> str:
        cand = self.candidates[-1]
        origin = f" (refined from {parent})" if parent is not None else ""
        if cand.area == 0:
            return f"Candidate {cid}{origin} on view {view.id} is empty: the segmenter found nothing there."
        vb = self.to_frame_box(view, view.box_from_image(tuple(cand.box)))
        pct = 100 * cand.area / (self.image_shape[0] * self.image_shape[1])
        return (f"Candidate {cid}{origin} on view {view.id}: area {pct:.2f}% of the image, "
                f"box {vb} in view {view.id}, score {cand.score:.2f}.")

    # --- the record ----------------------------------------------------------------------------
    def trajectory(self, config: dict | None = None) -> Trajectory:
        h, w = self.image_shape
        traj = Trajectory(
            sample_id=self.task.sample_id, query=self.task.query,
            image={"path": self.task.image_path, "width": w, "height": h},
            system_prompt=self.system_prompt, user_text=self.user_text,
            config={**self.config.to_dict(), "frame": self.frame.to_dict(), "segmenter": self.segmenter.identifier,
                    **(config or {})},
            views=list(self.views), candidates=list(self.candidates), turns=list(self.turns),
            timings={"total": time.perf_counter() - self._started})
        if self.done:
            traj.final = {**self.final, "rle": encode_rle(self.answer())}
        if self.task.gt is not None and self.done:
            inter, union = intersection_union(self.answer(), self.task.gt)
            traj.metrics = {"iou": iou_from_counts(inter, union), "intersection": inter, "union": union}
        return traj
