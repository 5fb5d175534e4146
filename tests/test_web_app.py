"""`rsagent serve` end to end: the real server (oracle policy, GrabCut) in a subprocess on a free
local port, driven by headless Chromium over the DevTools protocol (tests/cdp_browser.py).

Segment tab: a COCO128 image, its ground-truth mask and a query are uploaded, the turns are seen
arriving one by one, then the final mask; both downloads are saved by the browser and read back.
A shapes scene drawn from a seed runs too. Browse tab: a folder made by a real `rsagent eval` is
paged through, sorted and filtered. Refusals: corrupt, oversized and too-many-pixel uploads, a
ground truth of the wrong size, the oracle without ground truth, and paths outside the browse
folders (absolute, '..', a symlink that escapes) each get a message in the page.

Screenshots are written to tests/artifacts/web/ (ignored by git); the path is printed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from cdp_browser import REQUIRE, Browser, Page, skip_reason
from PIL import Image

from rsagent.core.image import load_mask, save_mask
from rsagent.core.mask import GroundTruth, iou
from rsagent.core.trajectory import Trajectory

if not os.environ.get(REQUIRE):
    pytest.importorskip("gradio", reason="the web extra is not installed (pip install -e '.[web]')")
pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

ARTIFACTS = Path(__file__).parent / "artifacts" / "web"
TARGET = "000000000042-0"  # a dog covering about a sixth of its COCO128 image
MAX_UPLOAD_MB = 1  # small limits, so that the refusals are quick to provoke
MAX_UPLOAD_PIXELS = 1_000_000
GRADIO_NOISE = "console.warning: Method not implemented."  # Gradio 6's client logs this as each event stream closes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browse_root(tmp_path_factory) -> Path:
    """A browse folder holding a real `rsagent eval` run on 4 shapes scenes (its images inside too),
    and a symlink in it to a run outside it."""
    root = tmp_path_factory.mktemp("browse")
    run = subprocess.run([sys.executable, "-m", "rsagent.cli", "eval", "--dataset", "shapes", "--root",
                          str(root / "shapes"), "--split", "test:4", "--policy", "oracle", "--out",
                          str(root / "evals" / "shapes-oracle"), "--no-progress"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(root / "evals" / "shapes-oracle", outside / "secret-run")
    (root / "evals" / "escape").symlink_to(outside / "secret-run", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(browse_root, tmp_path_factory):
    """`rsagent serve` on 127.0.0.1 and a free port; stopped with Ctrl-C (SIGINT) at the end."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rsagent.cli", "serve", "--policy", "oracle", "--segmenter", "grabcut",
             "--port", str(port), "--browse", str(browse_root), "--max-upload-mb", str(MAX_UPLOAD_MB),
             "--max-upload-pixels", str(MAX_UPLOAD_PIXELS)],
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            # started as a background job of a script is started: SIGINT ignored, which Python keeps; Ctrl-C
            # must stop it all the same (CI hit this: the server outlived the test)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 90
        line = ""
        while "rsagent serve: http://" not in line:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or proc.poll() is not None:
                pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
            line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line  # local only unless told otherwise
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            # generous: CI runs this beside training jobs at low priority, and a starved process shuts down slowly
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "none: still running 90 s after Ctrl-C, killed"
    out = proc.stdout.read() if proc.stdout else ""
    assert code == 0, f"exit {code} after Ctrl-C; stdout {out[-1000:]!r}; stderr {log.read_text()[-2000:]}"
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Browser(tmp_path_factory.mktemp("profile"), timeout=60) as b:
        yield b


@pytest.fixture(scope="module")
def dog(coco128_target, tmp_path_factory) -> tuple[Path, Path, np.ndarray, str]:
    """A real COCO128 image, its ground-truth mask as a PNG, the mask, and the query."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        target = coco128_target(TARGET)
    folder = tmp_path_factory.mktemp("dog")
    gt = target.ground_truth().mask
    save_mask(folder / "dog_gt.png", gt)
    return Path(target.image_path), folder / "dog_gt.png", gt, target.query


@pytest.fixture
def app(server, browser):
    """Opens the app in a new tab (a new session); the tabs are closed after the test."""
    pages: list[Page] = []

    def open_tab() -> Page:
        page = browser.open(server, 1400, 1000)
        pages.append(page)
        page.wait_for("!!document.querySelector('#seg-run')", 30, "the app to render")
        return page

    yield open_tab
    for page in pages:
        page.close()


def _status(page: Page, contains: str, where: str = "#seg-status", timeout: float = 30) -> str:
    js = json.dumps(where)
    return page.wait_for(f"(t => t.includes({json.dumps(contains)}) && t)"
                         f"((document.querySelector({js}) || {{}}).textContent || '')", timeout,
                         f"{where} to say {contains!r}")


def _screenshot(page: Page, name: str, full_page: bool = True) -> None:
    path = page.screenshot(ARTIFACTS / name, full_page=full_page)
    print(f"screenshot: {path}")


def _errors(page: Page) -> list[str]:
    return [e for e in page.errors() if e != GRADIO_NOISE]


def _watch_turns(page: Page) -> None:
    """Record the number of turn blocks each time the turns panel changes (proof that they stream)."""
    page.evaluate("""(() => { window.turnCounts = [];
        new MutationObserver(() => { const n = document.querySelectorAll('#seg-turns .turn').length;
            if (window.turnCounts[window.turnCounts.length - 1] !== n) window.turnCounts.push(n); })
          .observe(document.body, {childList: true, subtree: true, characterData: true}); })()""")


def test_segment_a_coco_image_turn_by_turn(app, browser, dog, tmp_path):
    image_path, gt_path, gt, query = dog
    page = app()
    page.set_files("#seg-image input[type=file]", [image_path])
    _status(page, "Loaded upload")
    page.set_files("#seg-gt input[type=file]", [gt_path])
    _status(page, "with a ground-truth mask")
    page.type("#seg-query textarea", query)
    _watch_turns(page)
    page.click("#seg-run")
    done = _status(page, "Done:", timeout=60)
    page.wait_for("!!document.querySelector('#seg-final img') && !!document.querySelector('#seg-traj-download')",
                  20, "the final mask and the downloads")
    _screenshot(page, "segment_coco.png")

    counts = page.evaluate("window.turnCounts")
    turns = page.evaluate("document.querySelectorAll('#seg-turns .turn').length")
    assert turns >= 2 and counts[-1] == turns
    assert [n for n in counts if 0 < n < turns], f"no turn arrived before the last: {counts}"  # streamed
    assert counts == sorted(counts)
    pictures = page.evaluate("Array.from(document.querySelectorAll('#seg-turns .turn img')).map(i => "
                             "i.complete && i.naturalWidth > 0 && i.src.startsWith('data:image/jpeg'))")
    assert pictures == [True] * turns  # every turn's overlay is there and decodes
    assert page.evaluate("document.querySelector('#seg-final img').naturalWidth") > 0

    # both downloads, as the browser saves them
    downloads = tmp_path / "downloads"
    browser.download_to(downloads)
    page.click("#seg-mask-download")
    page.click("#seg-traj-download")
    deadline = time.monotonic() + 20
    while not ((downloads / "mask.png").is_file() and (downloads / "trajectory.json").is_file()):
        assert time.monotonic() < deadline, f"downloads missing: {list(downloads.iterdir())}"
        browser.pump(0.2)
    traj = Trajectory.load(downloads / "trajectory.json")
    mask = load_mask(downloads / "mask.png", size=(gt.shape[1], gt.shape[0]))
    assert len(traj.turns) == turns and traj.query == query
    assert traj.metrics["iou"] == pytest.approx(iou(mask, GroundTruth(gt))) and traj.metrics["iou"] > 0.6
    assert f"IoU {traj.metrics['iou']:.4f}" in done
    assert _errors(page) == []


def test_segment_a_shapes_scene_with_its_ground_truth(app):
    page = app()
    page.evaluate("document.querySelector('#seg-seed input').value = ''")
    page.type("#seg-seed input", "7")
    page.click("#seg-draw")
    _status(page, "shapes scene test-000007")
    assert page.evaluate("document.querySelector('#seg-query textarea').value")  # the scene brings its query
    page.click("#seg-run")
    done = _status(page, "Done:", timeout=60)
    assert "IoU" in done and "failed" not in done
    assert page.evaluate("document.querySelectorAll('#seg-turns .turn').length") >= 1
    _screenshot(page, "segment_shapes.png", full_page=False)
    assert _errors(page) == []


def test_bad_uploads_get_a_message_in_the_page(app, dog, tmp_path):
    image_path, gt_path, _, query = dog
    corrupt = tmp_path / "photo.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not an image" * 20)
    text = tmp_path / "notes.jpg"
    text.write_text("plain text, not a JPEG\n")
    huge = tmp_path / "huge.png"  # 1.44 million pixels, a few kB on disk
    Image.fromarray(np.zeros((1200, 1200, 3), np.uint8)).save(huge)
    heavy = tmp_path / "heavy.png"  # over the byte limit
    heavy.write_bytes(os.urandom(int(MAX_UPLOAD_MB * 1.5 * (1 << 20))))
    small_gt = tmp_path / "small_gt.png"
    save_mask(small_gt, np.ones((10, 10), bool))

    page = app()
    page.set_files("#seg-image input[type=file]", [corrupt])
    assert "photo.png" in _status(page, "not a readable image")
    page.set_files("#seg-image input[type=file]", [text])
    _status(page, "notes.jpg) is not a readable image")
    page.set_files("#seg-image input[type=file]", [huge])
    _status(page, "over this server's limit of 1,000,000 (rsagent serve --max-upload-pixels)")
    _screenshot(page, "refused_upload.png", full_page=False)
    # a file over the byte limit never reaches the handlers: Gradio refuses it (client and server side)
    page.set_files("#seg-image input[type=file]", [heavy])
    page.wait_for("document.body.innerText.includes('exceed the maximum allowed size')", 20, "the size refusal")
    # Gradio's pop-up cannot name the option, so the upload's label does
    assert page.evaluate("document.querySelector('#seg-image').innerText").count(
        f"at most {MAX_UPLOAD_MB:g} MB (rsagent serve --max-upload-mb)") == 1

    page = app()  # a fresh session: no image yet
    page.type("#seg-query textarea", query)
    page.click("#seg-run")
    _status(page, "upload an image or draw a shapes scene first")
    page.set_files("#seg-image input[type=file]", [image_path])
    _status(page, "no ground truth")
    page.click("#seg-run")
    _status(page, "the oracle policy reads the ground truth")
    page.set_files("#seg-gt input[type=file]", [small_gt])
    _status(page, "mask is 10x10 but the image is")
    assert "Traceback" not in page.evaluate("document.body.innerText")


def test_browse_an_eval_folder(app, browse_root):
    run = browse_root / "evals" / "shapes-oracle"
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    page = app()
    page.click("#tab-browse-button")
    page.type("#browse-folder input", "evals/shapes")  # the dropdown lists the folders found
    options = page.wait_for("Array.from(document.querySelectorAll('#browse-folder li[role=option]'))"
                            ".map(e => e.textContent.trim()).filter(t => t.length)", 10, "the folder list")
    assert any(str(run) in o for o in options), options
    assert not any("escape" in o or "secret" in o for o in options)  # a symlinked folder is not listed
    page.type("#browse-folder input", str(run))
    page.press("Enter")
    page.wait_for("document.querySelectorAll('#browse-episodes section.traj').length === 3", 30, "a page of episodes")
    assert "Page 1 of 2" in page.text("#browse-page")
    side = page.text("#browse-summary")
    assert f"{summary['gIoU']:.4f}" in side and f"{summary['cIoU']:.4f}" in side
    lowest = min(records, key=lambda r: (r["IoU"], r["sample_id"]))["sample_id"]
    first = page.text("#browse-episodes section.traj table")
    assert lowest in first  # sorted by IoU, lowest first
    overlays = page.evaluate("Array.from(document.querySelectorAll('#browse-episodes .turn img')).map(i => "
                             "i.complete && i.naturalWidth > 0)")
    assert overlays and all(overlays)
    assert "source image not shown" not in page.text("#browse-episodes")  # its images lie inside the browse root
    _screenshot(page, "browse_eval.png", full_page=False)

    page.click("#browse-next")
    page.wait_for("document.querySelector('#browse-page').textContent.includes('Page 2 of 2')", 20, "page 2")
    assert page.evaluate("document.querySelectorAll('#browse-episodes section.traj').length") == 1
    page.click("label[data-testid='IoU, highest first-radio-label']")
    page.wait_for("document.querySelector('#browse-page').textContent.includes('Page 1 of 2')", 20, "back to page 1")
    highest = max(records, key=lambda r: (r["IoU"], r["sample_id"]))["sample_id"]
    assert highest in page.text("#browse-episodes section.traj table")
    page.click("label[data-testid='failures-radio-label']")
    failures = sum(r["status"] != "ok" for r in records)
    page.wait_for(f"document.querySelector('#browse-page').textContent.includes('{failures} of 4 episodes match') || "
                  f"document.querySelector('#browse-page').textContent.includes('of {failures}')", 20, "the filter")
    assert _errors(page) == []


def test_browse_refuses_paths_outside_its_folders(app, browse_root):
    page = app()
    page.click("#tab-browse-button")
    # (a path that begins like a listed folder would be completed to it by the dropdown on Enter)
    for path in ("/etc", "evals/escape", "../" * 12 + "etc", f"{browse_root}/.."):
        page.type("#browse-folder input", path)
        page.press("Enter")
        _status(page, f"refused: {path} is outside the folders this server browses", "#browse-status", 20)
        assert page.evaluate("document.querySelectorAll('#browse-episodes .turn').length") == 0
    _screenshot(page, "browse_refused.png", full_page=False)


def test_browse_an_uploaded_trajectory(app, browse_root, tmp_path):
    run = browse_root / "evals" / "shapes-oracle"
    saved = sorted((run / "trajectories").glob("*.json"))[0]
    page = app()
    page.click("#tab-browse-button")
    page.set_files("#browse-upload input[type=file]", [saved])
    page.wait_for("document.querySelectorAll('#browse-episodes .turn').length > 0", 20, "the uploaded episode")
    assert "masks are drawn on grey" in page.text("#browse-episodes")  # no source image uploaded with it
    broken = tmp_path / "trajectory.json"
    broken.write_text('{"schema_version": 1, "turns": [')
    page.click("#browse-upload button[aria-label=Clear]")
    page.set_files("#browse-upload input[type=file]", [broken])
    _status(page, "is not an rsagent trajectory.json", "#browse-status", 20)
