"""HTML of turns and episodes for the app, built from the project's one turn renderer
(`trajectory_page.turn_block`, through synthesis' `trajectory_section`) with pictures inline."""

from __future__ import annotations

from html import escape

import numpy as np

from rsagent.core.trajectory import Trajectory, Turn
from rsagent.eval.report import shrink
from rsagent.policies.openai_compat import encode_image
from rsagent.synth.stats import GALLERY_JPEG_QUALITY, GALLERY_SIDE, trajectory_section
from rsagent.trajectory_page import TURN_STYLE, turn_block

# Scoped to the app's HTML panels by Gradio; small pictures (shapes scenes) are enlarged crisply.
PANEL_CSS = TURN_STYLE + """
.turn img{width:min(420px,55%);height:auto} .turn img.small{image-rendering:pixelated}
.traj{border-top:2px solid #999;margin-top:1.2em}
table.big{border-collapse:collapse;font-size:14px;margin:.4em 0}
table.big th,table.big td{border:none;border-bottom:1px solid #e6e6e6;padding:3px 10px 3px 0;text-align:left;
vertical-align:top;overflow-wrap:anywhere} table.big th{font-weight:600;white-space:nowrap}
.note{color:#8a5a00} .empty{color:#777;font-style:italic}"""
GREY = 200  # the canvas masks are drawn on when the source image cannot be shown
MIN_SIDE = 448  # small images (shapes scenes) are shown enlarged to at least this


def enlarge(array: np.ndarray) -> np.ndarray:
    """A small image or mask repeated to at least MIN_SIDE, so that outlines drawn on it stay thin."""
    factor = -(-MIN_SIDE // max(array.shape[:2]))
    if factor <= 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def picture_src(picture: np.ndarray) -> str:
    """A picture as an inline JPEG no wider than the panel shows it."""
    return encode_image(shrink(picture, [], GALLERY_SIDE)[0], "jpeg", GALLERY_JPEG_QUALITY)


def turn_html(turn: Turn, picture: np.ndarray) -> str:
    html = turn_block(turn, picture_src(picture))
    return html.replace("<img ", "<img class='small' ", 1) if max(picture.shape[:2]) < 256 else html


def blank_canvas(traj: Trajectory) -> np.ndarray:
    return np.full((int(traj.image["height"]), int(traj.image["width"]), 3), GREY, np.uint8)


def episode_html(traj: Trajectory, image: np.ndarray | None, facts: list[tuple[str, str]],
                 note: str | None = None) -> str:
    """One episode: its facts, then every turn beside the overlay it showed (on grey without `image`)."""
    cells = [(k, escape(v)) for k, v in facts]  # html_table escapes the names itself
    section = trajectory_section(traj, blank_canvas(traj) if image is None else image, cells)
    if max(int(traj.image["height"]), int(traj.image["width"])) < 256:
        section = section.replace("<img ", "<img class='small' ")
    return (f"<p class='note'>{escape(note)}</p>" if note else "") + section


def facts_html(facts: list[tuple[str, str]], title: str | None = None, note: str | None = None) -> str:
    """A section of facts without turns (a sample that kept no trajectory), or a summary panel."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    head = f"<h3>{escape(title)}</h3>" if title else ""
    tail = f"<p class='note'>{escape(note)}</p>" if note else ""
    return f"<section class='traj'>{head}<table class='big'>{rows}</table>{tail}</section>"


def message_html(text: str) -> str:
    return f"<p class='empty'>{escape(text)}</p>"
