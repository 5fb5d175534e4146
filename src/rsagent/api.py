"""The library calls behind `rsagent segment`: load inputs, run one episode, write its outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsagent.core.image import load_image, load_mask, save_image, save_mask
from rsagent.core.mask import GroundTruth, decode_rle
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import EpisodeConfig, EpisodeTask
from rsagent.env.render import turn_overlays
from rsagent.policies.base import Policy
from rsagent.runner import run_episode
from rsagent.segmenters.base import Segmenter
from rsagent.trajectory_page import trajectory_html


@dataclass
class SegmentResult:
    trajectory: Trajectory
    out_dir: Path | None

    @property
    def mask(self):
        return decode_rle(self.trajectory.final["rle"])

    @property
    def iou(self) -> float | None:
        return self.trajectory.metrics.get("iou")


def segment_image(image_path: str | Path, query: str, policy: Policy, segmenter: Segmenter, *,
                  gt_mask_path: str | Path | None = None, max_turns: int = 8,
                  out_dir: str | Path | None = None, sample_id: str | None = None) -> SegmentResult:
    """Segment `query` in the image at `image_path` with a policy and a segmenter.

    With `out_dir`, writes mask.png (0/255, the image's size), trajectory.json, one overlay per
    turn (turn_01.png, ...) and index.html showing the turns. With `gt_mask_path` (non-zero = target), the trajectory carries the IoU.
    """
    image = load_image(image_path)
    gt = None
    if gt_mask_path is not None:
        gt = GroundTruth(load_mask(gt_mask_path, size=(image.shape[1], image.shape[0])))
    task = EpisodeTask(image, query, sample_id or Path(image_path).stem, gt, str(image_path))
    traj = run_episode(policy, segmenter, task, EpisodeConfig(max_turns=max_turns))
    out = None
    if out_dir is not None:
        out = Path(out_dir)
        write_outputs(traj, image, out)
    return SegmentResult(traj, out)


def write_outputs(traj: Trajectory, image, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_mask(out / "mask.png", decode_rle(traj.final["rle"]))
    traj.save(out / "trajectory.json")
    names = []
    for index, picture in enumerate(turn_overlays(traj, image), start=1):
        names.append(f"turn_{index:02d}.png")
        save_image(out / names[-1], picture)
    (out / "index.html").write_text(trajectory_html(traj, names), encoding="utf-8")
