"""Views: the full image or a zoomed crop, and the coordinate transforms between frames.

Continuous coordinates: pixel (i, j) covers [i, i+1) x [j, j+1). Boxes are (x0, y0, x1, y1) with
exclusive x1, y1 in that frame; a point (x, y) names the pixel in column x, row y. A view shows the
crop `box` (integer, in image pixels) resampled to `size` (width, height) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rsagent.core.mask import Box


@dataclass(frozen=True)
class View:
    id: int
    box: tuple[int, int, int, int]  # crop in image pixels, x1/y1 exclusive
    size: tuple[int, int]  # (width, height) of the view as shown

    @classmethod
    def full(cls, width: int, height: int) -> "View":
        return cls(0, (0, 0, width, height), (width, height))

    @classmethod
    def zoom(cls, view_id: int, crop: tuple[int, int, int, int], target_long_side: int,
             max_scale: float) -> "View":
        """A view of `crop` upsampled so its long side is target_long_side, at most max_scale x."""
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        scale = max(1.0, min(max_scale, target_long_side / max(cw, ch)))
        return cls(view_id, crop, (max(1, round(cw * scale)), max(1, round(ch * scale))))

    @property
    def scale(self) -> tuple[float, float]:
        """View pixels per image pixel along x and y."""
        return (self.size[0] / (self.box[2] - self.box[0]), self.size[1] / (self.box[3] - self.box[1]))

    # --- coordinates -------------------------------------------------------------------------
    def box_to_image(self, box: Box) -> Box:
        sx, sy = self.scale
        return (self.box[0] + box[0] / sx, self.box[1] + box[1] / sy,
                self.box[0] + box[2] / sx, self.box[1] + box[3] / sy)

    def box_from_image(self, box: Box) -> Box:
        sx, sy = self.scale
        return ((box[0] - self.box[0]) * sx, (box[1] - self.box[1]) * sy,
                (box[2] - self.box[0]) * sx, (box[3] - self.box[1]) * sy)

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        """View pixel indices (N, 2) to image pixel indices, through pixel centres."""
        sx, sy = self.scale
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        x = np.floor(self.box[0] + (pts[:, 0] + 0.5) / sx)
        y = np.floor(self.box[1] + (pts[:, 1] + 0.5) / sy)
        return np.stack([np.clip(x, self.box[0], self.box[2] - 1),
                         np.clip(y, self.box[1], self.box[3] - 1)], axis=1).astype(np.int64)

    def points_from_image(self, points: np.ndarray) -> np.ndarray:
        """Image pixel indices (N, 2) to view pixel indices, through pixel centres."""
        sx, sy = self.scale
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        x = np.floor((pts[:, 0] + 0.5 - self.box[0]) * sx)
        y = np.floor((pts[:, 1] + 0.5 - self.box[1]) * sy)
        return np.stack([x, y], axis=1).astype(np.int64)

    # --- pixels ------------------------------------------------------------------------------
    def render(self, image: np.ndarray) -> np.ndarray:
        """The view's pixels: the crop, resampled to `size`."""
        x0, y0, x1, y1 = self.box
        crop = image[y0:y1, x0:x1]
        if (crop.shape[1], crop.shape[0]) == self.size:
            return np.ascontiguousarray(crop)
        return cv2.resize(crop, self.size, interpolation=cv2.INTER_CUBIC)

    def mask_to_image(self, mask: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """A bool mask in the view frame placed into a full-size image mask (outside the crop: 0)."""
        x0, y0, x1, y1 = self.box
        out = np.zeros(image_shape, bool)
        if (mask.shape[1], mask.shape[0]) == (x1 - x0, y1 - y0):
            out[y0:y1, x0:x1] = mask
        else:
            small = cv2.resize(mask.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
            out[y0:y1, x0:x1] = small >= 0.5
        return out

    def mask_from_image(self, mask: np.ndarray) -> np.ndarray:
        """A full-size bool mask seen in this view's frame."""
        x0, y0, x1, y1 = self.box
        crop = mask[y0:y1, x0:x1]
        if (crop.shape[1], crop.shape[0]) == self.size:
            return crop.copy()
        # NEAREST_EXACT samples at pixel centres, the same convention as points_from_image
        return cv2.resize(crop.astype(np.uint8), self.size, interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)

    def to_dict(self) -> dict:
        return {"id": self.id, "box": list(self.box), "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: dict) -> "View":
        return cls(int(d["id"]), tuple(int(v) for v in d["box"]), tuple(int(v) for v in d["size"]))  # type: ignore[arg-type]
