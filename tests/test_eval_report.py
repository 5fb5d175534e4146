"""report.html in headless Chromium: it loads without console errors, exceptions or missing files.

The page is driven over the DevTools protocol on a pipe (tests/cdp_browser.py), which reports what
the browser's console shows: uncaught exceptions, console.error calls, and resources that fail to
load. A deliberately broken page proves that each kind is caught.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
from cdp_browser import load_page, skip_reason
from test_eval_manifest import build_manifest, pick_targets, write_lines

from rsagent.env.episode import EpisodeConfig
from rsagent.eval import DatasetSpec, evaluate, safe_name, score
from rsagent.policies.oracle import OraclePolicy
from rsagent.segmenters import make_segmenter

# CI installs Chromium and sets RSAGENT_REQUIRE_CHROMIUM=1, so there the page check can never be skipped.
pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture(scope="module")
def eval_run(coco128_targets, tmp_path_factory) -> Path:
    """A small eval run with one sample whose image is missing (its card has no picture)."""
    root = tmp_path_factory.mktemp("reportset")
    entries = build_manifest(root, pick_targets(coco128_targets, 5), side=256)
    entries.append({**entries[0], "sample_id": "gone/1+2", "image": "images/missing.png"})
    write_lines(root / "manifest.jsonl", entries)
    out = root / "out"
    evaluate(DatasetSpec.create("manifest", root), out, policy_factory=OraclePolicy,
             segmenter_factory=partial(make_segmenter, "grabcut"), episode=EpisodeConfig(max_turns=3),
             progress=False, gallery=3)
    return out


def test_eval_report_loads_without_console_errors(eval_run, tmp_path):
    report = eval_run / "report.html"
    # sort the samples table by IoU (the page's only script) and read the first row back
    expression = ("document.querySelectorAll('#samples th')[1].click();"
                  "[document.querySelectorAll('.card').length, document.querySelectorAll('svg').length,"
                  " document.querySelector('#samples tbody tr td').textContent]")
    errors, value = load_page(report.as_uri(), expression, user_dir=tmp_path / "profile")
    assert errors == []
    iou_of = {r["sample_id"]: r["IoU"] for r in map(json.loads, (eval_run / "results.jsonl").read_text().splitlines())}
    cards, plots, first = value
    assert cards == 3 and plots == 2  # gallery capped at 3: worst, median, best; per-turn plot + histogram
    assert iou_of[first] == min(iou_of.values())  # sorted by IoU, lowest first
    # a per-episode page linked from the gallery also loads cleanly
    html = report.read_text()
    pages = sorted(eval_run.glob("pages/*/index.html"))
    assert pages and all(f"pages/{p.parent.name.replace('%', '%25')}/index.html" in html for p in pages)
    errors, _ = load_page(pages[0].as_uri(), user_dir=tmp_path / "profile")
    assert errors == []


def test_score_report_loads_without_console_errors(eval_run, tmp_path):
    root = eval_run.parent
    pred = tmp_path / "pred"
    pred.mkdir()
    masks = sorted((eval_run / "masks").glob("*.png"))
    for m in masks[1:]:  # the first prediction is missing
        shutil.copy(m, pred / m.name)
    out = tmp_path / "score"
    summary = score(DatasetSpec.create("manifest", root), pred, out, progress=False)
    assert summary["n"] == 6 and len(summary["missing"]) >= 1
    errors, cards = load_page((out / "report.html").as_uri(), "document.querySelectorAll('.card').length",
                              user_dir=tmp_path / "profile")
    assert errors == [] and cards == 6


def test_a_broken_page_is_caught(eval_run, tmp_path):
    html = (eval_run / "report.html").read_text()
    cases = {
        "exception": html.replace("</body>", "<script>undefinedFunction();</script></body>"),
        "console": html.replace("</body>", "<script>console.error('bad thing');</script></body>"),
        "missing file": html.replace("</body>", "<img src='gallery/no-such-picture.jpg'></body>"),
    }
    expected = {"exception": "undefinedFunction is not defined", "console": "console.error: bad thing",
                "missing file": "ERR_FILE_NOT_FOUND"}
    for name, page in cases.items():
        path = eval_run / f"broken-{safe_name(name)}.html"
        path.write_text(page)
        try:
            errors, _ = load_page(path.as_uri(), user_dir=tmp_path / "profile")
        finally:
            path.unlink()
        assert any(expected[name] in e for e in errors), (name, errors)
