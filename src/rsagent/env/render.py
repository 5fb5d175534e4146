"""Overlays a person (and a model) can read on any image: numbered candidates, contour plus
translucent fill, and a frame with a caption on zoomed views."""

from __future__ import annotations

import cv2
import numpy as np

from rsagent.core.mask import decode_rle, deepest_point
from rsagent.core.trajectory import ImageRef, Trajectory
from rsagent.core.view import View

# Distinct, saturated colours (RGB) that stay visible on most photos.
PALETTE = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (80, 220, 100), (220, 80, 255),
           (0, 230, 230), (255, 128, 0), (255, 96, 180)]
FRAME_COLOUR = (255, 255, 255)


def colour_for(mask_id: int) -> tuple[int, int, int]:
    return PALETTE[(mask_id - 1) % len(PALETTE)]


def _draw_label(canvas: np.ndarray, text: str, anchor: tuple[int, int], colour, scale: float) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    h, w = canvas.shape[:2]
    pad = max(2, round(th * 0.3))
    x = int(np.clip(anchor[0] - tw // 2, 0, max(0, w - tw - 2 * pad)))
    y = int(np.clip(anchor[1] + th // 2, th + pad, max(th + pad, h - base - pad)))
    cv2.rectangle(canvas, (x, y - th - pad), (x + tw + 2 * pad, y + base + pad), (0, 0, 0), -1)
    cv2.rectangle(canvas, (x, y - th - pad), (x + tw + 2 * pad, y + base + pad), colour, max(1, thick // 2))
    cv2.putText(canvas, text, (x + pad, y), font, scale, colour, thick, cv2.LINE_AA)


def render_overlay(pixels: np.ndarray, masks: list[tuple[int, np.ndarray]], caption: str | None = None,
                   alpha: float = 0.4) -> np.ndarray:
    """Draw masks (id, bool mask in the frame of `pixels`) on a copy of `pixels` (H, W, 3) uint8 RGB."""
    canvas = pixels.astype(np.float32)
    h, w = pixels.shape[:2]
    long_side = max(h, w)
    line = max(1, round(long_side / 320))
    scale = max(0.4, long_side / 900)
    for mask_id, mask in masks:
        colour = np.array(colour_for(mask_id), np.float32)
        canvas[mask] = canvas[mask] * (1 - alpha) + colour * alpha
    out = np.clip(canvas, 0, 255).astype(np.uint8)
    for mask_id, mask in masks:
        if not mask.any():
            continue
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 0, 0), line + 2, cv2.LINE_AA)  # dark halo: readable on bright images
        cv2.drawContours(out, contours, -1, colour_for(mask_id), line, cv2.LINE_AA)
    for mask_id, mask in masks:
        if mask.any():
            _draw_label(out, str(mask_id), deepest_point(mask)[0], colour_for(mask_id), scale)  # stays on the object
    if caption:
        cv2.rectangle(out, (0, 0), (w - 1, h - 1), (0, 0, 0), line + 2)
        cv2.rectangle(out, (0, 0), (w - 1, h - 1), FRAME_COLOUR, line)
        _draw_label(out, caption, (0, 0), FRAME_COLOUR, scale)
    return out


def view_caption(view: View) -> str | None:
    """Zoomed views carry their id and magnification, so the policy knows which frame it sees."""
    if view.id == 0:
        return None
    return f"view {view.id} ({view.scale[0]:.1f}x)"


def render_view(image: np.ndarray, view: View, masks: list[tuple[int, np.ndarray]],
                pixels: np.ndarray | None = None) -> np.ndarray:
    """Render `view` of the full image with candidates (id, full-size bool mask) drawn on it."""
    pixels = view.render(image) if pixels is None else pixels
    in_view = [(mid, view.mask_from_image(m)) for mid, m in masks]
    return render_overlay(pixels, in_view, view_caption(view))


def turn_overlays(traj: Trajectory, image: np.ndarray, start: int = 0) -> list[np.ndarray]:
    """One picture per turn: the image the turn's observation showed, else the answer so far on view 0.
    `start`: skip the pictures of the first `start` turns (already shown by a caller that streams turns)."""
    views = {v.id: v for v in traj.views}
    masks = {c.id: decode_rle(c.rle) for c in traj.candidates}
    pictures = []
    latest: list[int] = []
    for position, turn in enumerate(traj.turns):
        if turn.candidate_id is not None:
            latest = [turn.candidate_id]
        if position < start:
            continue
        refs = turn.observation.images or [ImageRef(0, tuple(latest))]
        ref = refs[0]
        pictures.append(render_view(image, views[ref.view_id], [(m, masks[m]) for m in ref.mask_ids]))
    return pictures
