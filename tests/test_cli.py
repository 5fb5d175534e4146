"""`python -m rsagent.cli segment` as a user runs it: outputs on success, one-line errors otherwise."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rsagent.core.mask import decode_rle
from rsagent.core.trajectory import Trajectory

SAMPLE = "000000000009-2"  # the broccoli, 640x480


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsagent.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def target(coco128_target):
    return coco128_target(SAMPLE)


@pytest.fixture(scope="module")
def gt_png(target, tmp_path_factory) -> Path:
    """The target's polygon rasterised with PIL (independently of rsagent), saved as a 0/255 PNG."""
    canvas = Image.new("L", (target.width, target.height), 0)
    pts = [(float(x) * target.width, float(y) * target.height) for x, y in target.polygon]
    ImageDraw.Draw(canvas).polygon(pts, fill=255)
    path = tmp_path_factory.mktemp("gt") / "gt.png"
    canvas.save(path)
    assert 0.1 < (np.asarray(canvas) > 0).mean() < 0.25
    return path


def test_segment_writes_outputs_and_reports_the_iou(target, gt_png, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("segment", target.image_path, target.query, "--gt-mask", gt_png, "--out", out,
                   "--max-turns", "6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stdout.strip()
    m = re.fullmatch(r"turns=(\d+) end=(\w+) iou=([0-9.]+) seconds=([0-9.]+) out=(\S+)", line)
    assert m, line
    turns, end, printed_iou = int(m.group(1)), m.group(2), float(m.group(3))
    assert 1 <= turns <= 6 and end in ("submit", "budget")
    assert Path(m.group(5)) == out

    # mask.png: single channel, 0/255, the image's size
    with Image.open(out / "mask.png") as im:
        assert im.size == (640, 480) and im.mode == "L"
        pred = np.asarray(im)
    assert set(np.unique(pred)) <= {0, 255} and (pred == 255).any()
    truth = np.asarray(Image.open(gt_png)) > 0
    p = pred > 0
    inter, union = np.logical_and(p, truth).sum(), np.logical_or(p, truth).sum()
    assert abs(printed_iou - inter / union) <= 1e-4
    assert printed_iou > 0.7

    # trajectory.json: loads, agrees with mask.png, one overlay per turn
    traj = Trajectory.load(out / "trajectory.json")
    assert len(traj.turns) == turns and traj.final["reason"] == end
    assert np.array_equal(decode_rle(traj.final["rle"]), p)
    assert traj.metrics["iou"] == pytest.approx(inter / union, abs=1e-12)
    assert traj.image == {"path": str(target.image_path), "width": 640, "height": 480}
    assert traj.query == target.query and traj.sample_id == Path(target.image_path).stem
    pngs = sorted(x.name for x in out.glob("turn_*.png"))
    assert pngs == [f"turn_{i:02d}.png" for i in range(1, turns + 1)]
    views = {v.id: v for v in traj.views}
    for turn in traj.turns:
        with Image.open(out / f"turn_{turn.index:02d}.png") as im:
            view = views[turn.observation.images[0].view_id] if turn.observation.images else views[0]
            assert im.size == view.size and im.mode == "RGB"
    assert sorted(x.name for x in out.iterdir()) == sorted(["index.html", "mask.png", "trajectory.json", *pngs])


def test_segment_with_an_empty_ground_truth(target, tmp_path):
    gt = tmp_path / "empty.png"
    Image.new("L", (640, 480), 0).save(gt)
    proc = run_cli("segment", target.image_path, "a unicorn", "--gt-mask", gt, "--out", tmp_path / "o",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("turns=1 end=submit iou=1.0000 ")
    assert not np.asarray(Image.open(tmp_path / "o" / "mask.png")).any()


# --- errors: exit 2, one line on stderr, no traceback -------------------------------------------------
def _bomb_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:20] = struct.pack(">I", width)
    png[20:24] = struct.pack(">I", height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    return bytes(png)


def _error_case(case: str, tmp: Path, image: Path, gt: Path) -> tuple[list, str]:
    """Arguments for one failing run and a fragment the error line must contain."""
    if case == "missing image":
        return [tmp / "nope.jpg", "q", "--gt-mask", gt], "nope.jpg"
    if case == "corrupt image":
        bad = tmp / "corrupt.jpg"
        bad.write_bytes(b"this is not a jpeg at all")
        return [bad, "q", "--gt-mask", gt], "corrupt.jpg"
    if case == "truncated image":
        half = tmp / "half.jpg"
        data = image.read_bytes()
        half.write_bytes(data[: len(data) // 2])
        return [half, "q", "--gt-mask", gt], "truncated"
    if case == "decompression bomb":
        bomb = tmp / "bomb.png"
        bomb.write_bytes(_bomb_png(40_000, 40_000))
        return [bomb, "q", "--gt-mask", gt], "decompression bomb"
    if case == "gt wrong size":
        small = tmp / "small.png"
        Image.new("L", (320, 240), 255).save(small)
        return [image, "q", "--gt-mask", small], "mask is 320x240 but the image is 640x480"
    if case == "gt missing":
        return [image, "q", "--gt-mask", tmp / "nogt.png"], "nogt.png"
    if case == "gt corrupt":
        bad = tmp / "badgt.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        return [image, "q", "--gt-mask", bad], "badgt.png"
    if case == "no gt with oracle":
        return [image, "q"], "--gt-mask"
    if case == "directory as image":
        return [tmp, "q", "--gt-mask", gt], str(tmp)
    if case == "zero turns":
        return [image, "q", "--gt-mask", gt, "--max-turns", "0"], "--max-turns"
    raise AssertionError(case)


ERROR_CASES = ["missing image", "corrupt image", "truncated image", "decompression bomb", "gt wrong size",
               "gt missing", "gt corrupt", "no gt with oracle", "directory as image", "zero turns"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_user_errors_are_one_line_and_exit_2(case, target, gt_png, tmp_path):
    args, fragment = _error_case(case, tmp_path, Path(target.image_path), gt_png)
    out = tmp_path / "out"
    proc = run_cli("segment", *args, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsagent: error: "), proc.stderr
    assert fragment in lines[0]
    assert proc.stdout == ""
    assert not out.exists(), "nothing is written when the inputs are bad"


def test_directory_as_image_says_directory(target, gt_png, tmp_path):
    proc = run_cli("segment", tmp_path, "q", "--gt-mask", gt_png, cwd=tmp_path)
    assert proc.returncode == 2
    assert "directory" in proc.stderr and "no such file" not in proc.stderr


def test_segment_with_sam2_from_a_local_directory(target, gt_png, tmp_path):
    """The sam2 path end to end: a tiny random SAM2 saved with save_pretrained, loaded by the CLI."""
    torch = pytest.importorskip("torch")
    from transformers import Sam2Model

    from rsagent.segmenters.sam2 import tiny_sam2_config

    torch.manual_seed(0)
    model_dir = tmp_path / "tiny-sam2"
    Sam2Model(tiny_sam2_config()).save_pretrained(model_dir)
    out = tmp_path / "out"
    proc = run_cli("segment", target.image_path, target.query, "--gt-mask", gt_png, "--segmenter", "sam2",
                   "--sam2-model", model_dir, "--device", "cpu", "--max-turns", "4", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    traj = Trajectory.load(out / "trajectory.json")
    assert traj.config["segmenter"] == str(model_dir)
    assert traj.candidates and all(c.score is not None for c in traj.candidates)
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (target.height, target.width) and set(np.unique(mask)) <= {0, 255}
    assert len(list(out.glob("turn_*.png"))) == len(traj.turns)


def test_index_html_shows_every_turn(target, gt_png, tmp_path):
    out = tmp_path / "out"
    assert run_cli("segment", target.image_path, target.query, "--gt-mask", gt_png, "--out", out,
                   cwd=tmp_path).returncode == 0
    page = (out / "index.html").read_text()
    traj = Trajectory.load(out / "trajectory.json")
    for turn in traj.turns:
        assert f"src='turn_{turn.index:02d}.png'" in page and f"Turn {turn.index}" in page
    assert target.query in page
