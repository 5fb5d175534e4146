"""The outcome reward: the LISA IoU of the episode's final mask."""

from __future__ import annotations

from rsagent.core.mask import GroundTruth, iou_from_counts
from rsagent.core.trajectory import Trajectory
from rsagent.train.rewards.base import Reward, lisa_counts, rle_mask


def final_reward(traj: Trajectory, gt: GroundTruth) -> Reward:
    """The LISA IoU of `traj.final["rle"]` against `gt` (1.0 when both are empty: an absent target
    answered by an empty submit).

    A crashed episode (`final["reason"] == "failed"`) scores 0.0 whatever its (empty) mask, and so
    does an unfinished one (no final RLE). Breakdown: iou, intersection, union, submitted (1.0 when
    the policy submitted, 0.0 when the budget ran out), failed (1.0 for a crash), and missing (1.0,
    only when there is no final RLE). Raises ValueError when the RLE's size is not the ground truth's.
    """
    final = traj.final or {}
    submitted = 1.0 if final.get("reason") == "submit" else 0.0
    if final.get("reason") == "failed":
        return Reward(0.0, {"iou": 0.0, "submitted": 0.0, "failed": 1.0})
    if not final.get("rle"):
        return Reward(0.0, {"iou": 0.0, "submitted": submitted, "failed": 0.0, "missing": 1.0})
    pred = rle_mask(final["rle"], gt, f"{traj.sample_id}: final mask")
    inter, union = lisa_counts(pred, gt)
    iou = iou_from_counts(inter, union)
    return Reward(iou, {"iou": iou, "intersection": float(inter), "union": float(union),
                        "submitted": submitted, "failed": 0.0})
