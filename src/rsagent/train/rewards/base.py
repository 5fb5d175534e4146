"""What every reward function returns, and the helpers they share (numpy only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rsagent.core.mask import GroundTruth, decode_rle, iou_from_counts
from rsagent.eval.metrics import PROTOCOLS


@dataclass(frozen=True)
class Reward:
    """A scalar reward and the named numbers it was made from (for logging and debugging)."""

    score: float
    breakdown: dict[str, float] = field(default_factory=dict)


def lisa_counts(pred: np.ndarray, gt: GroundTruth) -> tuple[int, int]:
    """I and U of a prediction under the LISA protocol (ignore pixels removed from both sides)."""
    return PROTOCOLS["lisa"].counts(pred, gt)


def lisa_iou(pred: np.ndarray, gt: GroundTruth) -> float:
    """Per-sample LISA IoU (1.0 when the union is empty)."""
    return iou_from_counts(*lisa_counts(pred, gt))


def rle_mask(rle: dict, gt: GroundTruth, what: str) -> np.ndarray:
    """Decode `rle`, checking that its size is the ground truth's."""
    size = tuple(int(v) for v in rle["size"])
    if size != tuple(gt.shape):
        raise ValueError(f"{what}: RLE size [h, w] = {list(size)} does not match the ground truth's "
                         f"{list(gt.shape)}")
    return decode_rle(rle)
