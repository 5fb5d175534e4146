"""A self-contained HTML page for one trajectory: each turn's reasoning, tool call, answer and overlay.

`turn_block` (with `TURN_STYLE`) is the one turn renderer: this page and the synthesis stats gallery
both use it."""

from __future__ import annotations

import json
from html import escape

from rsagent.core.trajectory import Trajectory, Turn

TURN_STYLE = """.turn{display:flex;gap:1.5em;border-top:1px solid #ddd;padding:1em 0}
.turn img{max-width:480px;border:1px solid #ccc;align-self:flex-start} .txt{flex:1;min-width:0}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em;border-radius:4px;font-size:13px}
.err{color:#b00020} .think{font-style:italic}"""
_STYLE = f"""body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}
table.sum td{{padding:2px 12px 2px 0}} {TURN_STYLE}
.turn img{{min-width:336px}}"""  # small pictures (112 px shapes scenes) are shown at least 3x


def turn_block(turn: Turn, src: str) -> str:
    """One turn: its reasoning, call, error and observation text beside the picture at `src`
    (a relative file name or a data URL)."""
    call = json.dumps(turn.tool_call, ensure_ascii=False) if turn.tool_call else "(no readable tool call)"
    iou = f" · IoU after turn {turn.answer_iou:.3f}" if turn.answer_iou is not None else ""
    parts = [f"<div class='turn'><div class='txt'><h3>Turn {turn.index}{iou}</h3>"]
    if turn.think:
        parts.append(f"<p class='think'>{escape(turn.think)}</p>")
    parts.append(f"<pre>{escape(call)}</pre>")
    if turn.error:
        parts.append(f"<p class='err'>Error: {escape(turn.error)}</p>")
    parts.append(f"<pre>{escape(turn.observation.text)}</pre></div>")
    parts.append(f"<img src='{escape(src)}' alt='turn {turn.index}'></div>")
    return "\n".join(parts)


def trajectory_html(traj: Trajectory, image_names: list[str]) -> str:
    """`image_names[i]` is the overlay file shown for turn i + 1 (relative to the page)."""
    rows = [("query", traj.query), ("sample", traj.sample_id), ("turns", f"{len(traj.turns)} of {traj.config.get('max_turns')}"),
            ("end", traj.final.get("reason", "unfinished")), ("segmenter", traj.config.get("segmenter")),
            ("policy", traj.config.get("policy"))]
    if traj.metrics:
        rows.append(("IoU", f"{traj.metrics['iou']:.4f}"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(traj.sample_id)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{escape(traj.query)}</h1><table class='sum'>"]
    parts += [f"<tr><td><b>{escape(k)}</b></td><td>{escape(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table>")
    parts += [turn_block(turn, name) for turn, name in zip(traj.turns, image_names)]
    parts.append("</body></html>")
    return "\n".join(parts)
