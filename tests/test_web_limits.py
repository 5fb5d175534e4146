"""The web app's safety checks, without a server: what the Browse tab may read (paths resolved, symlinks
followed, nothing outside the browse folders) and what an upload may be (bytes, pixels, format)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsagent.core.image import save_mask
from rsagent.core.mask import encode_rle
from rsagent.core.trajectory import Trajectory
from rsagent.eval.results import RESULTS
from rsagent.web.limits import MB, UploadError, UploadLimits, check_size, read_image, read_mask, read_trajectory
from rsagent.web.paths import BrowseRoots, PathRefused
from rsagent.web.runs import RunFolder, source_image


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    """root/ with a run folder and a picture; outside/ with a secret; links from root to both."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "runs" / "a").mkdir(parents=True)
    (root / "runs" / "a" / RESULTS).write_text(json.dumps({"sample_id": "s1", "IoU": 0.5, "status": "ok"}) + "\n")
    (root / "runs" / "a" / "summary.json").write_text(json.dumps({"kind": "eval", "n": 1, "gIoU": 0.5, "cIoU": 0.5,
                                                                  "failed": 0}))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "pic.png")
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "secret.png")
    (outside / "run").mkdir()
    (outside / "run" / RESULTS).write_text(json.dumps({"sample_id": "x", "IoU": 1.0, "status": "ok"}) + "\n")
    (outside / "run" / "run.json").write_text("{}")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "secret_link.png").symlink_to(outside / "secret.png")
    (root / "inner_link").symlink_to(root / "runs", target_is_directory=True)
    return {"root": root, "outside": outside}


def test_paths_inside_the_roots_resolve(tree):
    roots = BrowseRoots.create([tree["root"]])
    root = tree["root"].resolve()
    assert roots.resolve(root / "runs" / "a") == root / "runs" / "a"
    assert roots.resolve("runs/a") == root / "runs" / "a"  # relative to a root
    assert roots.resolve(f"{root}/runs/../runs/a") == root / "runs" / "a"  # '..' that stays inside
    assert roots.resolve("inner_link/a") == root / "runs" / "a"  # a link that stays inside
    assert roots.resolve(root) == root


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "..", "../outside/secret.txt", "runs/../../outside",
                                  "escape", "escape/secret.txt", "secret_link.png", "runs/a/../../escape/run"])
def test_paths_outside_the_roots_are_refused(tree, path):
    roots = BrowseRoots.create([tree["root"]])
    with pytest.raises(PathRefused, match="outside the folders this server browses"):
        roots.resolve(path)


def test_missing_empty_and_rootless_paths(tree):
    roots = BrowseRoots.create([tree["root"]])
    with pytest.raises(PathRefused, match="no such file"):
        roots.resolve("runs/nothing-here")
    for bad in ("", "   ", "runs/\0a"):
        with pytest.raises(PathRefused):
            roots.resolve(bad)
    with pytest.raises(PathRefused, match="--browse"):
        BrowseRoots.create([]).resolve("runs/a")


def test_roots_must_be_folders(tree):
    from rsagent.core.errors import RsagentError

    with pytest.raises(RsagentError, match="not a folder"):
        BrowseRoots.create([tree["root"] / "pic.png"])
    with pytest.raises(RsagentError, match="not a folder"):
        BrowseRoots.create([tree["root"] / "missing"])


def test_run_folders_are_found_without_entering_links(tree):
    roots = BrowseRoots.create([tree["root"]])
    assert roots.run_folders() == [tree["root"].resolve() / "runs" / "a"]  # not escape/run, not inner_link/a


def test_a_run_folder_whose_files_link_outside_is_refused(tree):
    roots = BrowseRoots.create([tree["root"]])
    run = RunFolder.open("runs/a", roots)
    assert run.kind == "eval" and [r["sample_id"] for r in run.records] == ["s1"]
    sneaky = tree["root"] / "runs" / "b"
    sneaky.mkdir()
    (sneaky / RESULTS).symlink_to(tree["outside"] / "run" / RESULTS)
    with pytest.raises(PathRefused, match="outside"):
        RunFolder.open(sneaky, roots)
    with pytest.raises(PathRefused, match="outside"):
        RunFolder.open("escape/run", roots)


def test_a_source_image_is_read_only_inside_the_roots(tree):
    roots, limits = BrowseRoots.create([tree["root"]]), UploadLimits()
    image, note = source_image(str(tree["root"] / "pic.png"), roots, limits)
    assert image is not None and note is None
    for path in (tree["outside"] / "secret.png", tree["root"] / "secret_link.png"):
        image, note = source_image(str(path), roots, limits)
        assert image is None and "outside the folders" in note


# --- uploads ------------------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width` x `height` (and whose pixel data is almost all missing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_upload_size_limit(tmp_path):
    limits = UploadLimits(max_bytes=1000)
    small, big, empty = tmp_path / "small.bin", tmp_path / "big.bin", tmp_path / "empty.png"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * 1001)
    empty.write_bytes(b"")
    assert check_size(small, limits, "the image") == small
    with pytest.raises(UploadError, match=r"big.bin\) is 0.0 MB, over this server's limit.*--max-upload-mb"):
        check_size(big, limits, "the image")
    with pytest.raises(UploadError, match="is empty"):
        check_size(empty, limits, "the image")
    with pytest.raises(UploadError, match="did not arrive"):
        check_size(tmp_path / "gone.png", limits, "the image")
    assert UploadLimits.from_options(2.5, 10).max_bytes == int(2.5 * MB)
    with pytest.raises(Exception, match="positive"):
        UploadLimits(max_bytes=0)


def test_upload_pixel_limit_is_checked_before_decoding(tmp_path):
    limits = UploadLimits(max_pixels=10_000)
    ok, wide = tmp_path / "ok.png", tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(ok)
    Image.fromarray(np.zeros((100, 101, 3), np.uint8)).save(wide)
    assert read_image(ok, limits).shape == (100, 100, 3)
    with pytest.raises(UploadError, match=r"101x100 = 10,100 pixels, over this server's limit of 10,000"):
        read_image(wide, limits)
    bomb = tmp_path / "bomb.png"  # 2 gigapixels claimed in a 33-byte header: refused without decoding
    _png_header_only(bomb, 50_000, 40_000)
    with pytest.raises(UploadError, match=r"bomb.png\) is far too large|over this server's limit"):
        read_image(bomb, UploadLimits())


def test_corrupt_and_unsupported_uploads(tmp_path):
    limits = UploadLimits()
    corrupt, text, truncated = tmp_path / "photo.png", tmp_path / "notes.jpg", tmp_path / "cut.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 30)
    text.write_text("not an image")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])
    for path in (corrupt, text):
        with pytest.raises(UploadError, match=rf"the image \({path.name}\) is not a readable image"):
            read_image(path, limits)
    with pytest.raises(UploadError, match=r"the image \(cut.png\).*corrupt or truncated") as info:
        read_image(truncated, limits)
    assert str(tmp_path) not in str(info.value)  # the server's temporary paths stay private


def test_ground_truth_upload_must_fit_the_image(tmp_path):
    limits = UploadLimits()
    mask = tmp_path / "gt.png"
    save_mask(mask, np.eye(20, 30, dtype=bool))
    assert read_mask(mask, (30, 20), limits).sum() == 20
    with pytest.raises(UploadError, match=r"mask is 30x20 but the image is 40x20"):
        read_mask(mask, (40, 20), limits)


def test_trajectory_upload_is_checked(tmp_path):
    limits = UploadLimits(max_pixels=10_000)
    traj = Trajectory("s", "the thing", {"path": None, "width": 50, "height": 40}, "sys", "user", {},
                      final={"mask_ids": [], "reason": "submit", "error": None,
                             "rle": encode_rle(np.zeros((40, 50), bool))})
    good = tmp_path / "good.json"
    traj.save(good)
    assert read_trajectory(good, limits).query == "the thing"
    cases = {"broken.json": '{"schema_version": 1, "turns": [',
             "list.json": "[1, 2, 3]",
             "version.json": json.dumps({**traj.to_dict(), "schema_version": 99}),
             "huge.json": json.dumps({**traj.to_dict(), "image": {"path": None, "width": 1000, "height": 1000}}),
             "mismatch.json": json.dumps({**traj.to_dict(), "final": {**traj.final, "rle": {"size": [9, 9], "counts": ""}}})}
    expected = {"broken.json": "not an rsagent trajectory.json", "list.json": "not an rsagent trajectory.json",
                "version.json": "schema version 99", "huge.json": "over this server's limit",
                "mismatch.json": "not the image's 50x40"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UploadError, match=expected[name]):
            read_trajectory(tmp_path / name, limits)


def test_serve_is_lazy_and_its_errors_are_one_line(tmp_path):
    """Other commands do not import gradio; a bad --browse folder is one line and exit 2."""
    code = "import sys, rsagent.cli as c; c._build_parser(); print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    pytest.importorskip("gradio")
    run = subprocess.run([sys.executable, "-m", "rsagent.cli", "serve", "--policy", "oracle", "--browse",
                          str(tmp_path / "missing")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"rsagent: error: --browse {tmp_path / 'missing'}: not a folder"]
