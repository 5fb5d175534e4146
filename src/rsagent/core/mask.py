"""Masks: RLE through pycocotools, boxes, and the IoU of the evaluation protocol."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in continuous pixel coordinates


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask, with counts as a str so it is JSON-serialisable."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(bool).astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of encode_rle; also accepts pycocotools' bytes counts and uncompressed list counts."""
    counts = rle["counts"]
    h, w = rle["size"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box (x0, y0, x1, y1) with exclusive x1/y1, or None for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def box_iou(a: Box, b: Box) -> float:
    """IoU of two boxes [x0, y0, x1, y1) (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def polygons_to_mask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise polygons given in pixel coordinates (each (N, 2)) into one bool mask (union)."""
    canvas = np.zeros((height, width), np.uint8)
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in polygons if len(p) >= 3]
    if pts:
        cv2.fillPoly(canvas, pts, 1)
    return canvas.astype(bool)


@dataclass(frozen=True)
class GroundTruth:
    """A target mask plus optional don't-care pixels (LISA's label 255)."""

    mask: np.ndarray
    ignore: np.ndarray | None = None

    @classmethod
    def from_label_map(cls, labels: np.ndarray) -> "GroundTruth":
        """From LISA's uint8 map: 1 = target, 255 = ignore, 0 = background."""
        ignore = labels == 255
        return cls(mask=labels == 1, ignore=ignore if ignore.any() else None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]

    def valid(self) -> np.ndarray:
        """Pixels that count (not ignore)."""
        return np.ones_like(self.mask) if self.ignore is None else ~self.ignore


def intersection_union(pred: np.ndarray, gt: GroundTruth) -> tuple[int, int]:
    """I and U over foreground pixels, with ignore pixels removed from both sides (LISA)."""
    if pred.shape != gt.mask.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.mask.shape}")
    p, g = pred.astype(bool), gt.mask
    if gt.ignore is not None:
        p = p & ~gt.ignore
        g = g & ~gt.ignore
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def iou_from_counts(inter: int, union: int) -> float:
    """IoU = I / U, and 1.0 when the union is empty (nothing to find, nothing predicted)."""
    return 1.0 if union == 0 else inter / union


def iou(pred: np.ndarray, gt: GroundTruth) -> float:
    """Per-sample IoU with LISA's rules (see intersection_union and iou_from_counts)."""
    return iou_from_counts(*intersection_union(pred, gt))


def deepest_point(mask: np.ndarray) -> tuple[tuple[int, int], float]:
    """The interior-most pixel (x, y) of a bool mask and its distance to the mask's border
    (the image edge counts as border)."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (int(x), int(y)), float(dist[y, x])
