"""The Browse tab's pages without a server, on a real `rsagent synth` folder: found under the browse
root, its stats as summary numbers, failures (rejected items) filtered, episodes paged with their turns."""

from __future__ import annotations

import json

from rsagent.eval.results import RESULTS
from rsagent.web.limits import UploadLimits
from rsagent.web.pages import PER_PAGE, open_upload, render_page
from rsagent.web.paths import BrowseRoots
from rsagent.web.runs import RunFolder


def test_a_synthesis_folder_pages_through_its_items(shapes_export):
    roots, limits = BrowseRoots.create([shapes_export.parent]), UploadLimits()
    assert shapes_export.resolve() in roots.run_folders()
    run = RunFolder.open(shapes_export, roots)
    stats = json.loads((shapes_export / "stats.json").read_text())
    records = [json.loads(line) for line in (shapes_export / RESULTS).read_text().splitlines()]
    assert run.kind == "synth" and len(run.records) == len(records)
    rows = dict(run.summary_rows())
    assert rows["items"] == str(stats["items"]) and rows["accepted"].startswith(str(stats["accepted"]))

    html, side, label, page = render_page(run, "IoU, highest first", "all", 0, roots, limits)
    pages = -(-len(records) // PER_PAGE)
    assert label.startswith(f"Page 1 of {pages}") and page == 0 and "accepted" in side
    assert html.count("<section class='traj'>") == min(PER_PAGE, len(records))
    assert "<div class='turn'>" in html and "source image not shown" not in html  # its scenes are inside the root
    best = max(records, key=lambda r: (r["IoU"], r["sample_id"]))  # ties broken by sample id, as the page does
    assert best["sample_id"] in html.split("<section class='traj'>")[1]
    _, _, last, page = render_page(run, "IoU, highest first", "all", 99, roots, limits)  # clamped to the last page
    assert page == pages - 1 and last.startswith(f"Page {pages} of {pages}")

    rejected = [r for r in records if r["status"] != "accepted"]
    html, _, label, _ = render_page(run, "sample id", "failures", 0, roots, limits)
    if rejected:
        assert f"of {len(rejected)}" in label and rejected[0]["sample_id"] in html
    else:
        assert label == f"0 of {len(records)} episodes match"


def test_an_uploaded_trajectory_with_and_without_its_image(shapes_export, tmp_path):
    roots, limits = BrowseRoots.create([shapes_export.parent]), UploadLimits()
    saved = sorted((shapes_export / "trajectories").glob("*.json"))[0]
    opened = open_upload([str(saved)], limits)
    html, side, label, _ = render_page(opened, "sample id", "all", 0, roots, limits)
    assert "masks are drawn on grey" in html and label == "1 episode" and "Trajectory" in side
    image = json.loads(saved.read_text())["image"]["path"]
    with_image = open_upload([str(saved), image], limits)
    assert with_image.image is not None and with_image.note is None
