"""What the Browse tab shows, without the UI: a page of episodes of an open run folder (each with its
turns and overlays) beside the folder's summary, or an uploaded trajectory.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.core.trajectory import Trajectory
from rsagent.eval.report import fmt
from rsagent.web import messages
from rsagent.web.limits import UploadLimits, read_image, read_trajectory
from rsagent.web.paths import BrowseRoots
from rsagent.web.render import episode_html, facts_html, message_html
from rsagent.web.runs import RunFolder, record_facts, source_image

PER_PAGE = 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class OpenedTrajectory:
    """An uploaded trajectory.json, with its source image when one was uploaded beside it."""

    traj: Trajectory
    image: np.ndarray | None
    note: str | None


def trajectory_facts(traj: Trajectory) -> list[tuple[str, str]]:
    facts = [("sample", traj.sample_id), ("query", traj.query), ("turns", str(len(traj.turns))),
             ("end", str(traj.final.get("reason", "unfinished"))), ("policy", str(traj.config.get("policy"))),
             ("segmenter", str(traj.config.get("segmenter")))]
    if traj.metrics.get("iou") is not None:
        facts.append(("IoU", fmt(traj.metrics["iou"])))
    return facts


def open_upload(paths: list[str] | None, limits: UploadLimits) -> OpenedTrajectory:
    """The trajectory.json among the uploaded files (and the image beside it, if any)."""
    files = [Path(p) for p in paths or []]
    jsons = [p for p in files if p.suffix.lower() == ".json"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(jsons) != 1 or len(files) > 2:
        raise RsagentError("upload one trajectory.json, and optionally its source image")
    traj = read_trajectory(jsons[0], limits)
    if not images:
        return OpenedTrajectory(traj, None, "no source image uploaded: the masks are drawn on grey")
    image = read_image(images[0], limits, "the source image")
    if image.shape[:2] != (int(traj.image["height"]), int(traj.image["width"])):
        raise RsagentError(f"the image is {image.shape[1]}x{image.shape[0]} but the trajectory's is "
                           f"{traj.image['width']}x{traj.image['height']}")
    return OpenedTrajectory(traj, image, None)


def render_page(opened: RunFolder | OpenedTrajectory | None, order: str, show: str, page: int,
                roots: BrowseRoots, limits: UploadLimits) -> tuple[str, str, str, int]:
    """(episodes HTML, summary HTML, page label, page) for what is open."""
    if opened is None:
        return message_html("Choose a folder or upload a trajectory.json."), "", "", 0
    if isinstance(opened, OpenedTrajectory):
        facts = trajectory_facts(opened.traj)
        return (episode_html(opened.traj, opened.image, facts, opened.note), facts_html(facts, "Trajectory"),
                "1 episode", 0)
    chosen = opened.episodes(order, show)
    pages = max(1, -(-len(chosen) // PER_PAGE))
    page = min(max(0, int(page)), pages - 1)
    shown = chosen[page * PER_PAGE:(page + 1) * PER_PAGE]
    parts = [_episode(opened, rec, roots, limits) for rec in shown] or [message_html("No episodes match.")]
    label = (f"Page {page + 1} of {pages} · episodes {page * PER_PAGE + 1}–{page * PER_PAGE + len(shown)} "
             f"of {len(chosen)}" if shown else f"0 of {len(opened.records)} episodes match")
    return "\n".join(parts), facts_html(opened.summary_rows(), "Summary"), label, page


def _episode(run: RunFolder, record: dict, roots: BrowseRoots, limits: UploadLimits) -> str:
    facts = record_facts(record)
    try:
        traj = run.trajectory(record, roots, limits)
    except Exception as exc:  # noqa: BLE001 - one unreadable episode must not hide the others
        return facts_html(facts, record.get("query"), f"trajectory not shown: {messages.user_message(exc)}")
    if traj is None:
        return facts_html(facts, record.get("query"), "this run kept no trajectory for this sample")
    image, note = source_image(traj.image.get("path") or record.get("image"), roots, limits)
    try:
        return episode_html(traj, image, facts, note)
    except Exception as exc:  # noqa: BLE001 - e.g. a trajectory that does not fit its image
        return facts_html(facts, record.get("query"), f"turns not shown: {messages.user_message(exc)}")
