"""The segmenter interface: encode an image once (`set_image`), then many cheap `predict` calls.

All coordinates are in the pixel frame of the image given to `set_image` (for the environment, the
view's pixels): boxes (x0, y0, x1, y1) with exclusive x1/y1, points (N, 2) as (x, y) pixel indices,
labels (N,) with 1 = foreground click and 0 = background click.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Prediction:
    masks: np.ndarray  # (K, H, W) bool, best first
    scores: np.ndarray  # (K,) float, the segmenter's own confidence
    logits: np.ndarray | None = None  # (K, h, w) float32 low-res logits (SAM), reusable as a mask prompt


@dataclass
class MaskPrompt:
    """A previous candidate given back to the segmenter (SAM: its low-res logits; GrabCut: its label map)."""

    mask: np.ndarray  # (H, W) bool in the current image's frame
    logits: np.ndarray | None = None  # (h, w) low-res logits from the same segmenter and image, if any


class Segmenter(ABC):
    """Base class with an LRU cache of encoded images keyed by the caller (e.g. (image id, view id))."""

    name: str = "segmenter"

    def __init__(self, cache_size: int = 8) -> None:
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_size = cache_size
        self._state: Any = None
        self._shape: tuple[int, int] | None = None
        self.encode_count = 0  # how many times _encode ran: lets tests and benchmarks see cache hits

    @property
    def identifier(self) -> str:
        """What produced the masks (model id or algorithm + settings), for reports."""
        return self.name

    def set_image(self, image: np.ndarray, key: Hashable | None = None) -> None:
        """Make `image` ((H, W, 3) uint8 RGB) current; encode it unless `key` is cached."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            self._state, self._shape = self._cache[key]
            return
        self._state = self._encode(image)
        self.encode_count += 1
        self._shape = image.shape[:2]
        if key is not None:
            self._cache[key] = (self._state, self._shape)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def predict(self, box: tuple[float, float, float, float] | None = None,
                points: np.ndarray | None = None, labels: np.ndarray | None = None,
                mask_prompt: MaskPrompt | None = None, multimask: bool = True) -> Prediction:
        if self._state is None or self._shape is None:
            raise RuntimeError("call set_image before predict")
        if box is None and (points is None or len(points) == 0) and mask_prompt is None:
            raise ValueError("predict needs a box, points or a mask prompt")
        pts = None if points is None else np.asarray(points, np.float64).reshape(-1, 2)
        lbl = None if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if pts is not None and (lbl is None or len(lbl) != len(pts)):
            raise ValueError("points and labels must have the same length")
        return self._predict(self._state, self._shape, box, pts, lbl, mask_prompt, multimask)

    @abstractmethod
    def _encode(self, image: np.ndarray) -> Any:
        """The expensive, prompt-independent work on one image."""

    @abstractmethod
    def _predict(self, state: Any, shape: tuple[int, int], box, points, labels,
                 mask_prompt: MaskPrompt | None, multimask: bool) -> Prediction:
        """The cheap, per-prompt work; masks at the image's full (H, W)."""
