"""One episode played for the Segment tab, turn by turn: each turn's HTML as soon as the policy and
the tool have played it, then the final mask and the files to download (`api.write_outputs`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsagent.api import write_outputs
from rsagent.core.mask import GroundTruth, decode_rle
from rsagent.env.episode import EpisodeConfig, EpisodeTask
from rsagent.env.render import turn_overlays
from rsagent.eval.report import prediction_picture
from rsagent.policies.base import Policy
from rsagent.runner import episode_trajectory, play_turns
from rsagent.segmenters.base import Segmenter
from rsagent.web.inputs import SegmentInput
from rsagent.web.render import enlarge, turn_html

FINAL_SIDE = 1024  # long side of the final picture at most


@dataclass
class LiveUpdate:
    turns: list[str]  # HTML of each turn played so far
    status: str
    done: bool = False
    failed: bool = False  # the episode crashed (policy or segmenter); the status says why
    final: np.ndarray | None = None  # the final mask over the image (ground truth outlined in green)
    files: dict[str, Path] = field(default_factory=dict)  # "mask" / "trajectory" -> file, once done


def play(policy: Policy, segmenter: Segmenter, inp: SegmentInput, query: str, max_turns: int,
         out_dir: Path) -> Iterator[LiveUpdate]:
    """Play the episode, yielding after every turn; the last update is `done`, with the outputs in `out_dir`."""
    gt = GroundTruth(inp.gt) if inp.gt is not None else None
    task = EpisodeTask(inp.image, query, inp.name, gt)
    blocks: list[str] = []
    episode = None
    t0 = time.perf_counter()
    for episode in play_turns(policy, segmenter, task, EpisodeConfig(max_turns=max_turns)):
        if len(episode.turns) > len(blocks):
            traj = episode_trajectory(episode, policy)
            new = traj.turns[len(blocks):]
            blocks += [turn_html(t, p) for t, p in zip(new, turn_overlays(traj, inp.image, start=len(blocks)))]
        if not episode.done:
            yield LiveUpdate(list(blocks), f"Turn {len(blocks)} of at most {max_turns} played; thinking…")
    assert episode is not None  # play_turns yields at least once
    traj = episode_trajectory(episode, policy)
    write_outputs(traj, inp.image, out_dir)
    mask = decode_rle(traj.final["rle"])
    gt_mask = inp.gt if inp.gt is not None else np.zeros_like(mask)
    final = prediction_picture(enlarge(inp.image), enlarge(mask), enlarge(gt_mask), FINAL_SIDE)
    files = {"mask": out_dir / "mask.png", "trajectory": out_dir / "trajectory.json"}
    yield LiveUpdate(blocks, _status(traj, time.perf_counter() - t0), done=True,
                     failed=traj.final.get("reason") == "failed", final=final, files=files)


def _status(traj, seconds: float) -> str:
    reason = traj.final.get("reason")
    parts = [f"Done: {len(traj.turns)} turn{'s' if len(traj.turns) != 1 else ''}", f"ended by {reason}"]
    if traj.metrics.get("iou") is not None:
        parts.append(f"IoU {traj.metrics['iou']:.4f} against the ground truth")
    parts.append(f"{seconds:.1f} s")
    text = ", ".join(parts) + "."
    if reason == "failed":
        text += f" The episode failed: {traj.final.get('error')}"
    return text

