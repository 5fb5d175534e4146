"""The process reward: credit for correcting the best candidate, costs for wasted turns."""

from __future__ import annotations

import math

import numpy as np

from rsagent.core.mask import GroundTruth
from rsagent.core.trajectory import Trajectory
from rsagent.train.rewards.base import Reward, lisa_iou, rle_mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Plain IoU of two bool masks; two empty masks are identical (1.0)."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def process_reward(traj: Trajectory, gt: GroundTruth, *, gain: float = 1.0, invalid_cost: float = 0.1,
                   noop_cost: float = 0.1, noop_iou: float = 0.99) -> Reward:
    """gain * improvement - invalid_cost * invalid - noop_cost * noop.

    Turns are walked in order (by `Turn.index`); the candidates of a turn are those whose `turn` field
    names it. best = the highest LISA IoU against `gt` of the credited candidates so far (0 before the
    first). improvement = the sum over turns of best_after - best_before, counted only on turns after
    the one that made the first candidate (its quality is the final reward's business). Since best
    never falls, improvement = best_iou - first_iou: a correction that helps earns its gain, one that
    makes things worse earns nothing (and costs nothing here; the final reward pays for the mask).

    invalid = turns with an error (rejected: nothing ran). noop = executed turns that changed nothing:
    a segment / refine whose new candidate's mask has plain IoU >= noop_iou with an earlier
    candidate's (two empty masks count as identical), or a zoom_in whose new view's box is an earlier
    view's box (view 0, the full image, included). submit is never a no-op. A no-op candidate is not
    credited (it does not enter best), so adding a no-op turn never raises the score, whatever the knobs.

    Breakdown: improvement, invalid, noop, best_iou, first_iou (IoUs 0.0 when there is no candidate).
    """
    if not 0.0 <= noop_iou <= 1.0 or not math.isfinite(noop_iou):
        raise ValueError(f"noop_iou must be in [0, 1], got {noop_iou}")
    views = {v.id: v for v in traj.views}
    by_turn: dict[int, list] = {}
    for cand in traj.candidates:
        by_turn.setdefault(cand.turn, []).append(cand)
    earlier: list[np.ndarray] = []  # masks of all candidates made so far (no-ops included)
    best = first = 0.0
    have_first = False
    improvement = 0.0
    invalid = noop = 0
    for turn in sorted(traj.turns, key=lambda t: t.index):
        if turn.error is not None:
            invalid += 1
            continue
        before = best
        turn_noop = False
        for cand in by_turn.get(turn.index, []):
            mask = rle_mask(cand.rle, gt, f"{traj.sample_id}: candidate {cand.id}")
            if any(mask_iou(mask, prev) >= noop_iou for prev in earlier):
                turn_noop = True
            else:
                best = max(best, lisa_iou(mask, gt))
            earlier.append(mask)
        if turn.view_id is not None and turn.view_id in views:
            box = tuple(views[turn.view_id].box)
            if any(tuple(v.box) == box for vid, v in views.items() if vid < turn.view_id):
                turn_noop = True
        noop += turn_noop
        if have_first:
            improvement += max(0.0, best - before)
        elif earlier:
            have_first, first = True, best
    score = gain * improvement - invalid_cost * invalid - noop_cost * noop
    return Reward(score, {"improvement": improvement, "invalid": float(invalid), "noop": float(noop),
                          "best_iou": best, "first_iou": first})
