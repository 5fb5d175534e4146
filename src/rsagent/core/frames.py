"""Coordinate frames: the numbers a policy writes, mapped to the pixels of the view it was shown, and back.

A view is rendered at `display_size(natural size)`, so the pixels the policy sees are exactly the
view's pixels. Two kinds of frame follow:

- pixel frames: coordinates are the view's own pixels. `pixels` shows views at their natural size;
  `qwen2.5-vl` shows them smart-resized the way Qwen2.5-VL's processor would (sides multiples of 28,
  total pixels within [min_pixels, max_pixels]), so the model's absolute coordinates are view pixels
  and the processor does not resize again.
- `norm1000`: integers 0..1000 along each axis of the view, whatever its size (models trained on
  normalised coordinates).

Points name a pixel; boxes are edges (x1, y1 exclusive), as in core.view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

QWEN_FACTOR = 28  # patch 14 x spatial merge 2
QWEN_MIN_PIXELS = 56 * 56
QWEN_DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # 1280 visual tokens per image: ~1 MP


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) that Qwen2-VL/Qwen2.5-VL's image processor resizes an image to."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio over 200 ({width}x{height}) is not supported by Qwen2.5-VL")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class PixelFrame:
    """Coordinates are the view's pixels, shown at the natural size."""

    name = "pixels"

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) a view whose natural size is (width, height) is shown at."""
        return width, height

    def extent(self, view_size: tuple[int, int]) -> tuple[int, int]:
        """Box edges lie in [0, extent]; points name pixels in [0, point_max]."""
        return view_size

    def point_max(self, view_size: tuple[int, int]) -> tuple[int, int]:
        return view_size[0] - 1, view_size[1] - 1

    def contains_box(self, box, view_size: tuple[int, int]) -> bool:
        """Inside the view and non-degenerate."""
        w, h = self.extent(view_size)
        return 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h

    def contains_points(self, points, view_size: tuple[int, int]) -> bool:
        pts = np.asarray(points).reshape(-1, 2)
        mx, my = self.point_max(view_size)
        return bool(np.all((pts[:, 0] >= 0) & (pts[:, 0] <= mx) & (pts[:, 1] >= 0) & (pts[:, 1] <= my)))

    def points_to_view(self, points: np.ndarray, view_size: tuple[int, int]) -> np.ndarray:
        return np.asarray(points, np.int64).reshape(-1, 2)

    def points_from_view(self, points: np.ndarray, view_size: tuple[int, int]) -> np.ndarray:
        return np.asarray(points, np.int64).reshape(-1, 2)

    def box_to_view(self, box, view_size: tuple[int, int]) -> tuple[float, float, float, float]:
        return tuple(float(v) for v in box)  # type: ignore[return-value]

    def box_from_view(self, box, view_size: tuple[int, int]) -> list[int]:
        return [round(float(v)) for v in box]

    def describe(self, view_size: tuple[int, int]) -> str:
        return f"{view_size[0]}x{view_size[1]} pixels"

    @property
    def rule(self) -> str:
        """The system prompt's sentence on what coordinates mean."""
        return "Coordinates are integer pixels of a view"

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class SmartResizeFrame(PixelFrame):
    """Qwen2.5-VL: views shown smart-resized; coordinates are absolute pixels of what the model saw."""

    name = "qwen2.5-vl"
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_DEFAULT_MAX_PIXELS
    factor: int = QWEN_FACTOR

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return w, h

    def to_dict(self) -> dict:
        return {"name": self.name, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "factor": self.factor}


@dataclass(frozen=True)
class NormalizedFrame(PixelFrame):
    """Integers 0..scale along each axis of the view. A point m names view pixel floor(m * size / scale)."""

    name = "norm1000"
    scale: int = 1000

    def extent(self, view_size: tuple[int, int]) -> tuple[int, int]:
        return self.scale, self.scale

    def point_max(self, view_size: tuple[int, int]) -> tuple[int, int]:
        return self.scale, self.scale  # m = scale names the last pixel

    def points_to_view(self, points: np.ndarray, view_size: tuple[int, int]) -> np.ndarray:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        size = np.array(view_size, np.float64)
        return np.clip(np.floor(pts * size / self.scale), 0, size - 1).astype(np.int64)

    def points_from_view(self, points: np.ndarray, view_size: tuple[int, int]) -> np.ndarray:
        # ceil: the smallest m whose floor(m * size / scale) is the pixel, so view -> frame -> view
        # is exact whenever the view is at most `scale` pixels wide and high
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return np.ceil(pts * self.scale / np.array(view_size, np.float64) - 1e-9).astype(np.int64)

    def box_to_view(self, box, view_size: tuple[int, int]) -> tuple[float, float, float, float]:
        sx, sy = view_size[0] / self.scale, view_size[1] / self.scale
        return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

    def box_from_view(self, box, view_size: tuple[int, int]) -> list[int]:
        sx, sy = self.scale / view_size[0], self.scale / view_size[1]
        return [round(float(box[0] * sx)), round(float(box[1] * sy)), round(float(box[2] * sx)), round(float(box[3] * sy))]

    def describe(self, view_size: tuple[int, int]) -> str:
        return f"{view_size[0]}x{view_size[1]} pixels; coordinates are 0-{self.scale} along each axis"

    @property
    def rule(self) -> str:
        return (f"Coordinates are integers from 0 to {self.scale} along each axis of a view "
                f"(0 = left or top edge, {self.scale} = right or bottom edge)")

    def to_dict(self) -> dict:
        return {"name": self.name, "scale": self.scale}


Frame = PixelFrame  # the interface: every frame is a PixelFrame subclass
FRAMES = ("pixels", "qwen2.5-vl", "norm1000")


def make_frame(name: str, max_pixels: int | None = None, min_pixels: int | None = None) -> Frame:
    """A frame by name; the pixel limits apply to `qwen2.5-vl`."""
    if name == "pixels":
        return PixelFrame()
    if name == "qwen2.5-vl":
        return SmartResizeFrame(min_pixels=min_pixels or QWEN_MIN_PIXELS, max_pixels=max_pixels or QWEN_DEFAULT_MAX_PIXELS)
    if name == "norm1000":
        return NormalizedFrame()
    raise ValueError(f"unknown coordinate frame {name!r}; choose one of {', '.join(FRAMES)}")


def frame_from_dict(d: dict) -> Frame:
    """The frame a trajectory records (`Frame.to_dict()`), rebuilt: replaying a trajectory needs it."""
    if d.get("name") == "qwen2.5-vl":
        return SmartResizeFrame(min_pixels=int(d["min_pixels"]), max_pixels=int(d["max_pixels"]), factor=int(d["factor"]))
    if d.get("name") == "norm1000":
        return NormalizedFrame(scale=int(d.get("scale", 1000)))
    if d.get("name") == "pixels":
        return PixelFrame()
    raise ValueError(f"unknown coordinate frame {d!r}; expected one of {', '.join(FRAMES)}")
