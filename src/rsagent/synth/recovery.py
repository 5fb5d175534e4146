"""Which turns of an expert trajectory may be imitated: a turn that makes things worse must be
corrected by the next turn that makes a candidate, or the trajectory is cut before it and submits
its best candidate so far. Replaying answers through a fresh episode rebuilds a trajectory exactly.

A turn makes things worse when it refines a candidate into a lower IoU than its parent's, or when it
segments something that lies almost entirely outside the target (a wrong object; a poor but
on-target first mask is the segmenter's limit, which later clicks work on). Zoom turns in between do
not count: the correction is the next candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rsagent.core.frames import frame_from_dict
from rsagent.core.mask import GroundTruth, decode_rle, iou
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.segmenters.base import Segmenter

MIN_GAIN = 0.005  # a refinement losing more IoU than this made things worse
MIN_PRECISION = 0.25  # a new segment with less of its area on the target is a wrong object


@dataclass(frozen=True)
class Verdict:
    cut_at: int | None  # 1-based index of the first uncorrected harmful turn: keep turns before it
    harmful: tuple[int, ...]  # every harmful turn (corrected or not)
    recovered: bool  # some harmful turn was corrected (the trajectory teaches recovery)


def _precision(mask: np.ndarray, gt: GroundTruth) -> float:
    care = mask if gt.ignore is None else mask & ~gt.ignore
    area = int(care.sum())
    return 1.0 if area == 0 else float((care & gt.mask).sum()) / area


def judge(traj: Trajectory, gt: GroundTruth) -> Verdict:
    """Find harmful turns and whether each is corrected by the next candidate-making turn."""
    masks = {c.id: decode_rle(c.rle) for c in traj.candidates}
    quality = {cid: iou(m, gt) for cid, m in masks.items()}
    by_turn = {c.turn: c for c in traj.candidates}
    harmful: list[int] = []
    cut_at = None
    recovered = False
    made = [t.index for t in traj.turns if t.index in by_turn]
    for pos, index in enumerate(made):
        cand = by_turn[index]
        if cand.parent is not None:
            bar = quality[cand.parent]
            bad = quality[cand.id] < bar - MIN_GAIN
        else:
            bar = quality[cand.id]
            bad = _precision(masks[cand.id], gt) < MIN_PRECISION
        if not bad:
            continue
        harmful.append(index)
        nxt = by_turn[made[pos + 1]] if pos + 1 < len(made) else None
        if cand.parent is None:
            fixed = nxt is not None and _precision(masks[nxt.id], gt) >= MIN_PRECISION and quality[nxt.id] > bar
        else:
            fixed = nxt is not None and quality[nxt.id] >= bar
        if fixed:
            recovered = True
        elif cut_at is None:
            cut_at = index
    return Verdict(cut_at, tuple(harmful), recovered)


def replay(traj: Trajectory, task: EpisodeTask, segmenter: Segmenter, answers: Sequence[str]) -> Episode:
    """A fresh episode on `task` in the trajectory's configuration, stepped through `answers`."""
    cfg = traj.config
    config = EpisodeConfig(max_turns=int(cfg["max_turns"]), zoom_long_side=cfg.get("zoom_long_side"),
                           max_zoom=float(cfg["max_zoom"]), min_zoom_side=int(cfg["min_zoom_side"]),
                           tools=tuple(cfg["tools"]))
    ep = Episode(task, segmenter, config, frame_from_dict(cfg["frame"]))
    for answer in answers:
        if ep.done:
            raise ValueError(f"{traj.sample_id}: the replayed episode ended before its last answer")
        ep.step(answer)
    return ep
