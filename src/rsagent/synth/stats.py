"""What a synthesis run produced: `stats.json` (`build_stats`) and a self-contained `stats.html`.

Rates count every item; the figures of the data itself (turns, tools, recovery) count the accepted
trajectories, which are what SFT trains on; the IoU distributions count every item that ran (not
failed), since the filter cuts the accepted ones off at its IoU bar. Recovery compares the final IoU
with the first candidate's: openings that deliberately start wrong or imperfect (a wrong object, a
jittered, too-tight or too-loose box) against clean ones (a clean box, clicks). Nothing here depends
on wall time, so both files are byte-identical between runs with the same seed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from html import escape
from pathlib import Path

import numpy as np

from rsagent.core.trajectory import Trajectory
from rsagent.env.render import turn_overlays
from rsagent.eval.report import STYLE, bin_counts, fmt, histogram_svg, html_table, shrink
from rsagent.core.files import atomic_write_text
from rsagent.policies.openai_compat import encode_image
from rsagent.synth.expert import BOX_OPENINGS, OPENINGS, WRONG_OPENINGS
from rsagent.synth.filters import REASONS
from rsagent.trajectory_page import TURN_STYLE, turn_block

MISTAKE_OPENINGS = (*WRONG_OPENINGS, *BOX_OPENINGS)  # a deliberately wrong or imperfect first move
GALLERY_SIDE, GALLERY_JPEG_QUALITY = 480, 85  # as wide as the page shows a turn's picture


# --- the numbers --------------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _ordered(counts: Counter, first: Iterable[str] = ()) -> dict[str, int]:
    """Counts with the known names first, in their order, then the others by name."""
    known = [k for k in first if k in counts]
    return {k: counts[k] for k in [*known, *sorted(k for k in counts if k not in known)]}


def _distribution(values: list[float]) -> dict:
    return {"n": len(values), "mean": _mean(values), "histogram": bin_counts(values)}


def _recovery(accepted: list[dict]) -> dict:
    """First candidate's IoU against the final one, over accepted trajectories that made a candidate."""
    rows = [r for r in accepted if r.get("first_iou") is not None]
    first = [float(r["first_iou"]) for r in rows]
    final = [float(r["IoU"]) for r in rows]
    return {"trajectories": len(rows), "first_iou": _mean(first), "iou": _mean(final),
            "gain": _mean([b - a for a, b in zip(first, final)]),
            "recovered": sum(bool(r.get("recovered")) for r in rows),
            "mistake_turns": sum(len(r.get("mistake_turns") or ()) for r in rows)}


def _breakdown(records: list[dict], key: str, order: Iterable[str] = ()) -> dict:
    items = _ordered(Counter(str(r.get(key)) for r in records), order)
    out = {}
    for value, n in items.items():
        accepted = [r for r in records if str(r.get(key)) == value and r["status"] == "accepted"]
        out[value] = {"items": n, "accepted": len(accepted), **_recovery(accepted)}
    return out


def build_stats(records: list[dict]) -> dict:
    """Counts, rates and distributions of a run's result records (see the module docstring)."""
    accepted = [r for r in records if r["status"] == "accepted"]
    ran = [r for r in records if r.get("reject") != "failed"]
    turns = Counter(int(r["turns"]) for r in accepted)
    tools: Counter = Counter()
    for r in accepted:
        tools.update(r.get("tools") or {})
    return {
        "items": len(records), "accepted": len(accepted), "rejected": len(records) - len(accepted),
        "acceptance_rate": round(len(accepted) / len(records), 6) if records else None,
        "reject_reasons": _ordered(Counter(r["reject"] for r in records if r["status"] != "accepted"), REASONS),
        "kinds": _breakdown(records, "kind"),
        "openings": _breakdown(records, "opening", OPENINGS),
        "recovery": {"mistake": _recovery([r for r in accepted if r.get("opening") in MISTAKE_OPENINGS]),
                     "clean": _recovery([r for r in accepted if r.get("opening") not in MISTAKE_OPENINGS])},
        "turns": {"mean": _mean([float(r["turns"]) for r in accepted]),
                  "histogram": {str(k): turns[k] for k in sorted(turns)}},
        "first_iou": {"ran": _distribution([float(r["first_iou"]) for r in ran if r.get("first_iou") is not None]),
                      "accepted": _distribution([float(r["first_iou"]) for r in accepted
                                                 if r.get("first_iou") is not None])},
        "iou": {"ran": _distribution([float(r["IoU"]) for r in ran]),
                "accepted": _distribution([float(r["IoU"]) for r in accepted])},
        "tools": {"calls": _ordered(tools),
                  "per_trajectory": {k: round(v / len(accepted), 6) for k, v in _ordered(tools).items()}},
        "cut": {"trajectories": sum(int(r.get("cut") or 0) > 0 for r in ran),
                "turns": sum(int(r.get("cut") or 0) for r in ran),
                "accepted_trajectories": sum(int(r.get("cut") or 0) > 0 for r in accepted)},
    }


# --- the page -----------------------------------------------------------------------------------
def _grid(head: list[str], rows: list[list[str]]) -> str:
    """A table of already-escaped cells; the first column is a name, the others numbers."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" if i == 0 else f"<td class='num'>{c}</td>"
                                     for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _recovery_cells(row: dict) -> list[str]:
    return [fmt(row["first_iou"]), fmt(row["iou"]), fmt(row["gain"]), str(row["recovered"])]


def trajectory_section(traj: Trajectory, image: np.ndarray, facts: list[tuple[str, str]]) -> str:
    """A trajectory's facts (escaped HTML cells) and every turn: the overlay it showed beside its reasoning
    and call, pictures inline. The synthesis gallery and the RL rollout gallery both use it."""
    pictures = [encode_image(shrink(p, [], GALLERY_SIDE)[0], "jpeg", GALLERY_JPEG_QUALITY)
                for p in turn_overlays(traj, image)]
    blocks = "\n".join(turn_block(turn, src) for turn, src in zip(traj.turns, pictures))
    return f"<section class='traj'><h3>{escape(traj.query)}</h3>{html_table(facts)}\n{blocks}</section>"


def _gallery_entry(record: dict, traj: Trajectory, image: np.ndarray) -> str:
    facts = [("sample", escape(record["sample_id"])), ("kind", escape(str(record.get("kind")))),
             ("opening", escape(str(record.get("opening")))), ("first candidate IoU", fmt(record.get("first_iou"))),
             ("final IoU", fmt(record.get("IoU"))), ("turns", fmt(record.get("turns"))),
             ("recovered", escape(str(record.get("recovered"))))]
    return trajectory_section(traj, image, facts)


def _summary(stats: dict) -> str:
    rate = f" ({100 * stats['acceptance_rate']:.1f}%)" if stats["acceptance_rate"] is not None else ""
    iou = stats["iou"]
    return html_table([
        ("items", str(stats["items"])), ("accepted", f"<b>{stats['accepted']}</b>{rate}"),
        ("rejected", str(stats["rejected"])), ("turns per accepted trajectory (mean)", fmt(stats["turns"]["mean"], 2)),
        ("final IoU (mean: ran / accepted)", f"{fmt(iou['ran']['mean'])} / {fmt(iou['accepted']['mean'])}"),
        ("cut trajectories (turns cut)", f"{stats['cut']['trajectories']} ({stats['cut']['turns']})")])


def _sections(stats: dict) -> list[str]:
    """Each figure of `stats` as a heading and a table or an SVG histogram."""
    counts = [[escape(str(k)), str(v)] for k, v in stats["reject_reasons"].items()]
    kinds = [[escape(k), str(v["items"]), str(v["accepted"])] for k, v in stats["kinds"].items()]
    openings = [[escape(k), str(v["items"]), str(v["accepted"]), *_recovery_cells(v)]
                for k, v in stats["openings"].items()]
    recovery = [[escape(k), str(v["trajectories"]), *_recovery_cells(v)] for k, v in stats["recovery"].items()]
    turns = [[escape(k), str(v)] for k, v in stats["turns"]["histogram"].items()]
    tools = [[escape(k), str(v), fmt(stats["tools"]["per_trajectory"][k], 2)] for k, v in stats["tools"]["calls"].items()]
    iou_cells = ["first IoU", "final IoU", "gain", "recovered"]
    return [
        "<h2>Rejections</h2>", _grid(["reason", "items"], counts),
        "<h2>Query kinds</h2>", _grid(["kind", "items", "accepted"], kinds),
        "<h2>Openings and recovery</h2>",
        "<p class='muted'>IoU figures over accepted trajectories; gain = final IoU - first candidate's IoU.</p>",
        _grid(["opening", "items", "accepted", *iou_cells], openings), "<p></p>",
        _grid(["first move", "trajectories", *iou_cells], recovery),
        "<h2>First candidate's IoU</h2><p class='muted'>Every item that ran.</p>",
        histogram_svg(stats["first_iou"]["ran"]["histogram"], "first-candidate IoU", "first-candidate IoU",
                      "trajectories"),
        "<h2>Final IoU</h2><p class='muted'>Every item that ran.</p>",
        histogram_svg(stats["iou"]["ran"]["histogram"], "IoU", "final IoU", "trajectories"),
        "<h2>Turns and tools (accepted)</h2><div style='display:flex;gap:3em;flex-wrap:wrap;align-items:flex-start'>",
        _grid(["turns", "trajectories"], turns), _grid(["tool", "calls", "per trajectory"], tools), "</div>"]


def page_head(title: str) -> str:
    """The head of a self-contained page of trajectory sections (`trajectory_section`)."""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
            f"<title>{escape(title)}</title><style>{STYLE}\n{TURN_STYLE}\n"
            ".traj{border-top:2px solid #999;margin-top:1.5em}</style></head><body>")


def stats_html(stats: dict, gallery: list[tuple[dict, Trajectory, np.ndarray]]) -> str:
    parts = [page_head("rsagent synth statistics"), "<h1>rsagent synth statistics</h1>", _summary(stats), *_sections(stats)]
    if gallery:
        parts += ["<h2>Accepted trajectories</h2>", *(_gallery_entry(*entry) for entry in gallery)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_stats_html(out: Path, stats: dict, gallery: list[tuple[dict, Trajectory, np.ndarray]]) -> Path:
    """Write `out`/stats.html: the figures of `stats` and a gallery of (record, trajectory, source image)."""
    path = Path(out) / "stats.html"
    atomic_write_text(path, stats_html(stats, gallery))
    return path
