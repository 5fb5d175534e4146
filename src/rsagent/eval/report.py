"""report.html: one self-contained page per run (inline CSS, a few lines of inline JS, inline SVG
plots, no network), with pictures as relative files beside it:

- `gallery/<name>.jpg`: the image with the prediction (filled, with its contour) and the ground
  truth's contour (green), for the worst, median and best samples (at most `gallery` of them);
- eval only: `pages/<name>/index.html` with `turn_XX.jpg`: every turn of those samples' episodes.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from rsagent.core.files import atomic_write_text
from rsagent.core.image import load_image, load_mask, save_image
from rsagent.core.trajectory import Trajectory
from rsagent.data.base import Sample
from rsagent.eval.results import prediction_path, safe_name

GT_COLOUR = (40, 230, 90)
THUMB_SIDE = 384
TURN_SIDE = 640
MAX_TABLE_ROWS = 5000

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:14px} td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
th{background:#f4f4f4} th.sort{cursor:pointer} .num{text-align:right;font-variant-numeric:tabular-nums}
.big td{font-size:15px} .gallery{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.card{width:260px;border:1px solid #ddd;border-radius:4px;padding:6px;font-size:13px;background:#fafafa}
.card img{width:100%;display:block;border-radius:2px} .card .q{color:#444;margin:4px 0;overflow-wrap:anywhere}
.card .noimg{height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.bad{color:#b00020} .muted{color:#777} svg text{font-size:11px;fill:#333}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}"""

# Sort the samples table by a column when its header is clicked (numbers numerically).
_SCRIPT = """(function () {
  var table = document.getElementById('samples');
  if (!table) { return; }
  var heads = table.querySelectorAll('th');
  heads.forEach(function (th, col) {
    th.classList.add('sort');
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute('data-dir') !== 'up';
      heads.forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', up ? 'up' : 'down');
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v') || a.cells[col].textContent;
        var y = b.cells[col].getAttribute('data-v') || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();"""


def _url(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def shrink(image: np.ndarray, masks: list[np.ndarray], side: int) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image, masks
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool) for m in masks]


def prediction_picture(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """The prediction filled (with its contour) and the ground truth outlined in green, long side at most `side`."""
    from rsagent.env.render import render_overlay

    small, (p, g) = shrink(image, [pred, gt], side)
    out = render_overlay(small, [(1, p)] if p.any() else [])
    if g.any():
        contours, _ = cv2.findContours(g.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, GT_COLOUR, 2, cv2.LINE_AA)
    return out


def _line_plot(values: list[float], active: list[int] | None) -> str:
    """Mean IoU after each turn, as inline SVG."""
    w, h, left, bottom, top, right = 520, 260, 44, 34, 14, 16
    pw, ph = w - left - right, h - top - bottom
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (pw * i / (n - 1) if n > 1 else pw / 2)
        return x, top + ph * (1 - max(0.0, min(1.0, v)))

    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' "
              "aria-label='mean IoU after each turn'>")]
    for tick in range(0, 11, 2):
        y = top + ph * (1 - tick / 10)
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{w - right}' y2='{y:.1f}' stroke='#e6e6e6'/>"
                     f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick / 10:.1f}</text>")
    for i in range(n):
        x, _ = xy(i, 0)
        parts.append(f"<text x='{x:.1f}' y='{h - bottom + 16}' text-anchor='middle'>{i + 1}</text>")
    parts.append(f"<text x='{left + pw / 2:.1f}' y='{h - 4}' text-anchor='middle'>after turn</text>")
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(values)))
    parts.append(f"<polyline fill='none' stroke='#3060d0' stroke-width='2' points='{points}'/>")
    for i, v in enumerate(values):
        x, y = xy(i, v)
        still = f", {active[i]} episodes played this turn" if active else ""
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3.5' fill='#3060d0'>"
                     f"<title>turn {i + 1}: mean IoU {v:.4f}{still}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def bin_counts(values: list[float], bins: int = 10) -> list[int]:
    """How many values fall in each of `bins` equal bins over [0, 1] (1.0 in the last)."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, math.floor(v * bins)))] += 1
    return counts


def histogram_svg(counts: list[int], what: str = "IoU", xlabel: str = "per-sample IoU", unit: str = "samples") -> str:
    """Counts of equal bins over [0, 1] (see `bin_counts`), as inline SVG bars."""
    bins = len(counts)
    w, h, left, bottom, top = 520, 200, 44, 30, 10
    pw, ph = w - left - 16, h - top - bottom
    peak = max(counts) or 1
    bw = pw / bins
    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' "
              f"aria-label='distribution of {escape(xlabel)}'>")]
    for i, c in enumerate(counts):
        bh = ph * c / peak
        x, y = left + i * bw, top + ph - bh
        parts.append(f"<rect x='{x + 1:.1f}' y='{y:.1f}' width='{bw - 2:.1f}' height='{bh:.1f}' fill='#7fa3e8'>"
                     f"<title>{escape(what)} {i / bins:.1f}-{(i + 1) / bins:.1f}: {c} {escape(unit)}</title></rect>")
        parts.append(f"<text x='{x + bw / 2:.1f}' y='{top + ph - bh - 3:.1f}' text-anchor='middle'>{c}</text>")
    for i in range(0, bins + 1, 2):
        parts.append(f"<text x='{left + i * bw:.1f}' y='{h - bottom + 16}' text-anchor='middle'>{i / bins:.1f}</text>")
    parts.append(f"<text x='{left + pw / 2:.1f}' y='{h - 2}' text-anchor='middle'>{escape(xlabel)}</text></svg>")
    return "".join(parts)


def select_gallery(records: list[dict], cap: int) -> list[tuple[str, list[dict]]]:
    """(section title, records): the worst, around the median, and the best, by IoU then sample id."""
    ranked = sorted(records, key=lambda r: (float(r["IoU"]), r["sample_id"]))
    if cap <= 0 or not ranked:
        return []
    if len(ranked) <= cap:
        return [("All samples, worst first", ranked)]
    third = cap // 3
    middle = cap - 2 * third
    mid_start = max(third, len(ranked) // 2 - middle // 2)
    mid_start = min(mid_start, len(ranked) - third - middle)
    return [("Worst", ranked[:third]), ("Around the median", ranked[mid_start:mid_start + middle]),
            ("Best", ranked[len(ranked) - third:][::-1])]


def _turn_page(out: Path, name: str, traj_path: Path, image: np.ndarray) -> str | None:
    """Write pages/<name>/index.html with one picture per turn; returns its URL relative to out."""
    from rsagent.env.render import turn_overlays
    from rsagent.trajectory_page import trajectory_html

    traj = Trajectory.load(traj_path)
    folder = out / "pages" / name
    names = []
    for index, picture in enumerate(turn_overlays(traj, image), start=1):
        small, _ = shrink(picture, [], TURN_SIDE)
        names.append(f"turn_{index:02d}.jpg")
        save_image(folder / names[-1], small)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "index.html", trajectory_html(traj, names))
    return _url("pages", name, "index.html")


def _card(out: Path, rec: dict, sample: Sample | None, predictions: Path | None) -> str:
    sid = rec["sample_id"]
    name = safe_name(sid)
    picture = "<div class='noimg'>image unavailable</div>"
    links = []
    traj_path = out / "trajectories" / f"{name}.json"
    image = None
    if sample is not None:
        try:
            image = load_image(sample.image_path)
            h, w = image.shape[:2]
            gt = sample.load_gt(h, w)
            pred = np.zeros((h, w), bool)
            if predictions is None:
                mask_path = out / "masks" / f"{name}.png"
                if mask_path.is_file():
                    pred = load_mask(mask_path, size=(w, h))
            else:
                path = prediction_path(predictions, sid)
                if rec["status"] == "ok" and path.is_file():
                    pred = load_mask(path, size=(w, h))
            valid = gt.valid()
            save_image(out / "gallery" / f"{name}.jpg", prediction_picture(image, pred & valid, gt.mask & valid))
            picture = (f"<img src='{escape(_url('gallery', name + '.jpg'))}' loading='lazy' "
                       f"alt='{escape(sid)}: prediction filled, ground truth outlined in green'>")
        except Exception as exc:  # noqa: BLE001 - a picture that cannot be drawn must not stop the report
            picture = f"<div class='noimg'>image unavailable ({escape(type(exc).__name__)})</div>"
    if traj_path.is_file():
        if image is not None:
            try:
                links.append(f"<a href='{escape(_turn_page(out, name, traj_path, image))}'>turns</a>")
            except Exception:  # noqa: BLE001, S110 - the trajectory's JSON link below still works
                pass
        links.append(f"<a href='{escape(_url('trajectories', name + '.json'))}'>trajectory.json</a>")
    status = rec["status"]
    badge = f" <span class='bad'>{escape(status)}</span>" if status != "ok" else ""
    turns = f" · {rec['turns']} turns" if rec.get("turns") is not None else ""
    error = f"<div class='bad'>{escape(str(rec.get('error'))[:300])}</div>" if rec.get("error") else ""
    return (f"<div class='card'>{picture}<div><b>{escape(sid)}</b>{badge}</div>"
            f"<div>IoU {float(rec['IoU']):.4f}{turns}</div><div class='q'>{escape(rec.get('query') or '')}</div>"
            f"{error}<div>{' · '.join(links)}</div></div>")


def html_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='big'>{body}</table>"


def report_html(summary: dict, records: list[dict], gallery_html: str) -> str:
    rep = summary.get("reproduce") or {}
    cfg = rep.get("config") or {}
    ds = cfg.get("dataset") or {}
    models = rep.get("models") or {}
    git = rep.get("git") or {}
    run = summary.get("run") or {}
    title = f"rsagent {summary['kind']}: {ds.get('name')} {ds.get('split') or ''}".strip()
    rows = [("samples (n)", fmt(summary["n"])), ("gIoU", f"<b>{fmt(summary['gIoU'])}</b>"),
            ("cIoU", f"<b>{fmt(summary['cIoU'])}</b>"),
            ("failed", f"{summary['failed']}" + (f" <span class='muted'>({escape(json.dumps(summary['status']))})</span>"
                                                 if summary["failed"] else "")),
            ("protocol", escape(summary["protocol"]["name"]) + f" <span class='muted'>{escape(summary['protocol']['description'])}</span>"),
            ("dataset", escape(f"{ds.get('name')} · {ds.get('root')} · split {ds.get('split')}"
                               + (f" · first {ds['limit']}" if ds.get("limit") else "")))]
    if summary["kind"] == "score":
        rows.append(("predictions", escape(str(cfg.get("predictions")))))
        rows.append(("missing / unreadable", f"{len(summary['missing'])} / {len(summary['unreadable'])}"))
    else:
        rows += [("policy", escape(str(models.get("policy")))), ("segmenter", escape(str(models.get("segmenter")))),
                 ("turn budget", escape(str((cfg.get("episode") or {}).get("max_turns")))),
                 ("turns used (mean)", fmt(summary["turns"]["mean"], 2)),
                 ("invalid calls", (f"{summary['tools']['invalid']} of {summary['tools']['total_turns']} turns "
                                   f"({100 * summary['tools']['invalid_rate']:.1f}%)")),
                 ("end reasons", escape(", ".join(f"{k} {v}" for k, v in summary["end_reasons"].items())))]
    sps = run.get("seconds_per_sample") or {}
    rows += [("seconds per sample", f"{fmt(sps.get('mean'), 3)} mean, {fmt(sps.get('median'), 3)} median"),
             ("executor", escape(f"{run.get('executor')} × {run.get('workers')}")),
             ("git", escape(f"{git.get('revision')}{' (dirty)' if git.get('dirty') else ''}" if git else "not a checkout")),
             ("versions", escape(", ".join(f"{k} {v}" for k, v in (rep.get("versions") or {}).items()))),
             ("command", f"<code>{escape(' '.join(run.get('argv') or []))}</code>")]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>",
             f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>", html_table(rows),
             ("<p class='muted'>Full numbers: <a href='summary.json'>summary.json</a> · per sample: "
             "<a href='results.jsonl'>results.jsonl</a></p>")]
    if summary.get("per_turn"):
        pt = summary["per_turn"]
        parts += ["<h2>Mean IoU after each turn</h2>",
                  "<p class='muted'>Over all samples; an episode that has ended keeps its final, scored IoU.</p>",
                  _line_plot(pt["iou"], pt.get("active")) if pt["iou"] else "<p>no turns</p>"]
        tools = summary["tools"]
        tool_rows = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{v}</td>"
                            f"<td class='num'>{tools['calls_per_sample'][k]:.2f}</td></tr>" for k, v in tools["calls"].items())
        hist = "".join(f"<tr><td class='num'>{escape(k)}</td><td class='num'>{v}</td></tr>"
                       for k, v in summary["turns"]["histogram"].items())
        parts += ["<h2>Tool calls and turns</h2><div style='display:flex;gap:3em;flex-wrap:wrap;align-items:flex-start'>",
                  (f"<table><tr><th>tool</th><th>calls</th><th>per sample</th></tr>{tool_rows}"
                  f"<tr><td>invalid</td><td class='num'>{tools['invalid']}</td><td class='num'>"
                  f"{tools['invalid'] / max(1, summary['n']):.2f}</td></tr></table>"),
                  f"<table><tr><th>turns used</th><th>samples</th></tr>{hist}</table></div>"]
    parts += ["<h2>Per-sample IoU</h2>", histogram_svg(bin_counts([float(r["IoU"]) for r in records]))]
    if gallery_html:
        parts += [("<h2>Gallery</h2><p class='legend muted'>Prediction<span style='background:rgb(255,64,64)'></span>"
                  "filled · ground truth<span style='background:rgb(40,230,90)'></span>outlined "
                  "(ignore regions left out)</p>"), gallery_html]
    ranked = sorted(records, key=lambda r: r["sample_id"])
    if ranked and len(ranked) <= MAX_TABLE_ROWS:
        body = "".join(
            f"<tr><td>{escape(r['sample_id'])}</td><td class='num' data-v='{float(r['IoU']):.6f}'>{float(r['IoU']):.4f}</td>"
            f"<td class='num'>{r['I']}</td><td class='num'>{r['U']}</td><td class='num'>{fmt(r.get('turns'))}</td>"
            f"<td>{escape(r['status'])}</td><td>{escape((r.get('query') or '')[:120])}</td></tr>" for r in ranked)
        parts += [("<h2>All samples</h2><p class='muted'>Click a column to sort.</p><table id='samples'><thead><tr>"
                  "<th>sample</th><th>IoU</th><th>I</th><th>U</th><th>turns</th><th>status</th><th>query</th>"
                  f"</tr></thead><tbody>{body}</tbody></table>")]
    parts += [f"<script>{_SCRIPT}</script></body></html>"]
    return "\n".join(parts)


def write_report(out: Path, summary: dict, records: list[dict], samples: list[Sample], *, gallery: int = 60,
                 predictions: Path | None = None) -> Path:
    """Render the gallery pictures and pages, then report.html; returns its path."""
    by_id = {s.sample_id: s for s in samples}
    sections = []
    for title, recs in select_gallery(records, gallery):
        cards = "".join(_card(out, r, by_id.get(r["sample_id"]), predictions) for r in recs)
        sections.append(f"<h3>{escape(title)}</h3><div class='gallery'>{cards}</div>")
    path = out / "report.html"
    atomic_write_text(path, report_html(summary, records, "".join(sections)))
    return path
