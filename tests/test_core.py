"""Core types: RLE, the IoU of the protocol, views and their coordinate frames, image and mask loading."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rsagent.core.errors import ImageError, MaskError, RsagentError
from rsagent.core.image import load_image, load_mask, save_image, save_mask
from rsagent.core.mask import (GroundTruth, decode_rle, encode_rle, intersection_union, iou, mask_box,
                               polygons_to_mask)
from rsagent.core.view import View

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- RLE -------------------------------------------------------------------------------------------
@st.composite
def masks(draw, max_side: int = 48):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    density = draw(st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return np.random.default_rng(seed).random((h, w)) < density


@SETTINGS
@given(masks())
def test_rle_round_trip(mask):
    rle = encode_rle(mask)
    assert rle["size"] == [mask.shape[0], mask.shape[1]]
    assert isinstance(rle["counts"], str)
    again = decode_rle(json.loads(json.dumps(rle)))
    assert again.dtype == bool and again.shape == mask.shape
    assert np.array_equal(again, mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 97), (97, 1), (7, 13), (480, 640), (1001, 3)])
@pytest.mark.parametrize("fill", ["empty", "full", "checker", "random"])
def test_rle_round_trip_shapes(shape, fill):
    h, w = shape
    mask = {"empty": np.zeros(shape, bool), "full": np.ones(shape, bool),
            "checker": (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool),
            "random": np.random.default_rng(h * w).random(shape) < 0.3}[fill]
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)


def test_rle_accepts_non_bool_masks_and_other_count_forms():
    mask = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)  # a 0/255 PNG-style mask
    expected = mask != 0
    assert np.array_equal(decode_rle(encode_rle(mask)), expected)
    assert np.array_equal(decode_rle(encode_rle(expected.astype(np.uint8))), expected)
    # pycocotools' own bytes counts, and uncompressed counts (column-major runs, zeros first).
    rle = encode_rle(expected)
    assert np.array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), expected)
    # columns: [0, 0], [1, 0], [1, 1] -> runs 2 zeros, 1 one, 1 zero, 2 ones
    assert np.array_equal(decode_rle({"size": [2, 3], "counts": [2, 1, 1, 2]}), expected)


# --- IoU -------------------------------------------------------------------------------------------
def _grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


PRED = _grid(["##..",
              "##..",
              "#...",
              "#..."])
TRUTH = _grid([".##.",
               ".#..",
               "#...",
               "...."])


def test_intersection_union_hand_computed():
    # pred: 6 pixels; truth: 4; both: (0,1), (1,1), (2,0) -> I = 3, U = 6 + 4 - 3 = 7
    assert intersection_union(PRED, GroundTruth(TRUTH)) == (3, 7)
    assert iou(PRED, GroundTruth(TRUTH)) == pytest.approx(3 / 7)
    assert iou(TRUTH, GroundTruth(PRED)) == pytest.approx(3 / 7)
    assert iou(PRED.astype(np.uint8) * 255, GroundTruth(TRUTH)) == pytest.approx(3 / 7)


def test_ignore_pixels_are_removed_from_both_sides():
    ignore = _grid(["#.#.",   # (0,0): pred only; (0,2): truth only
                    "....",
                    "#...",   # (2,0): both
                    "#..."])  # (3,0): pred only
    # pred left: (0,1), (1,0), (1,1) = 3; truth left: (0,1), (1,1) = 2; both: 2 -> I = 2, U = 3
    assert intersection_union(PRED, GroundTruth(TRUTH, ignore)) == (2, 3)
    assert iou(PRED, GroundTruth(TRUTH, ignore)) == pytest.approx(2 / 3)
    labels = np.where(ignore, 255, TRUTH.astype(np.uint8))
    assert iou(PRED, GroundTruth.from_label_map(labels)) == pytest.approx(2 / 3)


def test_empty_union_scores_one():
    empty = np.zeros((4, 4), bool)
    assert intersection_union(empty, GroundTruth(empty)) == (0, 0)
    assert iou(empty, GroundTruth(empty)) == 1.0
    # Everything predicted lies in ignore, nothing to find: U == 0 -> 1.0
    assert iou(PRED, GroundTruth(empty, ignore=PRED.copy())) == 1.0
    # The target is entirely ignore and nothing is predicted: 1.0
    assert iou(empty, GroundTruth(TRUTH, ignore=TRUTH.copy())) == 1.0
    # ... but predicting something outside the ignore region scores 0
    assert iou(PRED, GroundTruth(TRUTH, ignore=TRUTH.copy())) == 0.0
    assert iou(empty, GroundTruth(TRUTH)) == 0.0
    assert iou(PRED, GroundTruth(empty)) == 0.0


def test_iou_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((4, 5), bool), GroundTruth(np.zeros((4, 4), bool)))


def test_ground_truth_from_label_map():
    labels = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    gt = GroundTruth.from_label_map(labels)
    assert np.array_equal(gt.mask, labels == 1) and np.array_equal(gt.ignore, labels == 255)
    assert np.array_equal(gt.valid(), labels != 255)
    assert gt.shape == (2, 3)
    plain = GroundTruth.from_label_map(np.array([[0, 1]], np.uint8))
    assert plain.ignore is None and plain.valid().all()


def test_mask_box_and_polygons():
    assert mask_box(np.zeros((5, 5), bool)) is None
    m = np.zeros((5, 6), bool)
    m[2, 3] = True
    assert mask_box(m) == (3.0, 2.0, 4.0, 3.0)
    m[4, 0] = True
    assert mask_box(m) == (0.0, 2.0, 4.0, 5.0)
    square = polygons_to_mask([np.array([[1, 1], [4, 1], [4, 4], [1, 4]])], 6, 6)
    assert square.sum() == 16 and square[1:5, 1:5].all()  # OpenCV fills the boundary pixels
    two = polygons_to_mask([np.array([[0, 0], [1, 0], [1, 1], [0, 1]]), np.array([[4, 4], [5, 4], [5, 5]]),
                            np.array([[2, 2], [3, 3]])], 6, 6)  # the 2-point one is not a polygon
    assert two[0:2, 0:2].all() and two[4, 4] and two[5, 5] and not two[2, 2] and not two[3, 3]


# --- views -----------------------------------------------------------------------------------------
@st.composite
def zoom_views(draw):
    """A random image size, crop inside it and zoom setting -> (View, image width, image height)."""
    w = draw(st.integers(8, 700))
    h = draw(st.integers(8, 700))
    x0 = draw(st.integers(0, w - 1))
    y0 = draw(st.integers(0, h - 1))
    x1 = draw(st.integers(x0 + 1, w))
    y1 = draw(st.integers(y0 + 1, h))
    target = draw(st.integers(1, 1400))
    max_zoom = draw(st.sampled_from([1.0, 2.0, 4.0, 8.0]))
    return View.zoom(1, (x0, y0, x1, y1), target, max_zoom), w, h


def test_full_view_is_the_identity():
    v = View.full(640, 480)
    assert (v.id, v.box, v.size, v.scale) == (0, (0, 0, 640, 480), (640, 480), (1.0, 1.0))
    assert v.box_to_image((1, 2, 3, 4)) == (1, 2, 3, 4) == v.box_from_image((1, 2, 3, 4))
    pts = np.array([[0, 0], [639, 479], [17, 300]])
    assert np.array_equal(v.points_to_image(pts), pts) and np.array_equal(v.points_from_image(pts), pts)
    mask = np.random.default_rng(0).random((480, 640)) < 0.5
    assert np.array_equal(v.mask_from_image(mask), mask) and np.array_equal(v.mask_to_image(mask, (480, 640)), mask)
    img = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert np.array_equal(v.render(img), img)


def test_zoom_size_and_scale():
    v = View.zoom(3, (100, 50, 260, 170), 640, 8.0)  # 160x120 -> x4
    assert v.size == (640, 480) and v.scale == (4.0, 4.0)
    assert View.zoom(1, (0, 0, 20, 10), 640, 8.0).size == (160, 80)  # capped at 8x
    assert View.zoom(1, (0, 0, 300, 200), 100, 8.0).size == (300, 200)  # never shrinks
    assert View.zoom(1, (0, 0, 317, 246), 640, 8.0).size == (640, 497)
    v = View.zoom(1, (10, 20, 30, 40), 80, 8.0)
    assert v.box_to_image((0, 0, 80, 80)) == (10, 20, 30, 40)
    assert v.box_from_image((15, 25, 20, 30)) == (20, 20, 40, 40)
    assert v.points_to_image(np.array([[0, 0], [3, 3], [4, 7], [79, 79]])).tolist() == [[10, 20], [10, 20], [11, 21], [29, 39]]
    assert v.points_from_image(np.array([[10, 20], [29, 39]])).tolist() == [[2, 2], [78, 78]]
    assert View.from_dict(json.loads(json.dumps(v.to_dict()))) == v


@SETTINGS
@given(zoom_views(), st.data())
def test_box_round_trips(vw, data):
    v, w, h = vw
    sx, sy = v.scale
    assert sx >= 1.0 and sy >= 1.0
    vb = (data.draw(st.floats(-50, v.size[0] + 50)), data.draw(st.floats(-50, v.size[1] + 50)),
          data.draw(st.floats(-50, v.size[0] + 50)), data.draw(st.floats(-50, v.size[1] + 50)))
    assert v.box_from_image(v.box_to_image(vb)) == pytest.approx(vb, abs=1e-6)
    ib = (data.draw(st.floats(0, w)), data.draw(st.floats(0, h)), data.draw(st.floats(0, w)), data.draw(st.floats(0, h)))
    assert v.box_to_image(v.box_from_image(ib)) == pytest.approx(ib, abs=1e-6)
    # The whole view is the crop.
    assert v.box_to_image((0, 0, *v.size)) == pytest.approx(v.box)


@SETTINGS
@given(zoom_views(), st.data())
def test_point_round_trips(vw, data):
    v, w, h = vw
    x0, y0, x1, y1 = v.box
    # image -> view -> image is the identity on the crop's pixels (views only enlarge)
    img_pts = np.array([[data.draw(st.integers(x0, x1 - 1)), data.draw(st.integers(y0, y1 - 1))] for _ in range(5)])
    in_view = v.points_from_image(img_pts)
    assert np.all((in_view >= 0) & (in_view < np.array(v.size)))
    assert np.array_equal(v.points_to_image(in_view), img_pts)
    # view -> image lands in the crop; going back gives a view pixel of the same image pixel
    view_pts = np.array([[data.draw(st.integers(0, v.size[0] - 1)), data.draw(st.integers(0, v.size[1] - 1))]
                         for _ in range(5)])
    img = v.points_to_image(view_pts)
    assert np.all((img[:, 0] >= x0) & (img[:, 0] < x1) & (img[:, 1] >= y0) & (img[:, 1] < y1))
    back = v.points_from_image(img)
    assert np.array_equal(v.points_to_image(back), img)
    assert np.all(np.abs(back - view_pts) <= np.ceil(v.scale))
    # a view pixel's centre lies inside the image pixel it maps to
    cx = x0 + (view_pts[:, 0] + 0.5) / v.scale[0]
    cy = y0 + (view_pts[:, 1] + 0.5) / v.scale[1]
    assert np.all((img[:, 0] <= cx + 1e-9) & (cx < img[:, 0] + 1 + 1e-9))
    assert np.all((img[:, 1] <= cy + 1e-9) & (cy < img[:, 1] + 1 + 1e-9))


@SETTINGS
@given(zoom_views(), st.integers(0, 2 ** 32 - 1))
def test_masks_between_frames(vw, seed):
    v, w, h = vw
    if v.size[0] * v.size[1] > 400_000:
        v = View.zoom(1, v.box, max(v.box[2] - v.box[0], v.box[3] - v.box[1]), 1.0)
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = v.box
    mask = rng.random((h, w)) < 0.5
    seen = v.mask_from_image(mask)
    assert seen.shape == (v.size[1], v.size[0]) and seen.dtype == bool
    placed = v.mask_to_image(seen, (h, w))
    assert placed.shape == (h, w)
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert not placed[outside].any(), "a view's mask never reaches outside its crop"
    # Whole-frame masks map to the whole crop and back.
    full = v.mask_to_image(np.ones((v.size[1], v.size[0]), bool), (h, w))
    assert np.array_equal(full, ~outside)
    assert v.mask_from_image(full).all()
    # A constant block of image pixels stays the same block.
    blob = np.zeros((h, w), bool)
    blob[y0:y1, x0:x1] = True
    assert np.array_equal(v.mask_to_image(v.mask_from_image(blob), (h, w)), blob)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 8), st.integers(0, 2 ** 32 - 1))
def test_mask_round_trip_is_exact_at_integer_scales(cw, ch, k, seed):
    w, h = cw + 13, ch + 7
    v = View.zoom(1, (5, 3, 5 + cw, 3 + ch), k * max(cw, ch), 8.0)
    assert v.scale == (float(k), float(k))
    mask = np.random.default_rng(seed).random((h, w)) < 0.5
    crop_only = np.zeros_like(mask)
    crop_only[3:3 + ch, 5:5 + cw] = mask[3:3 + ch, 5:5 + cw]
    seen = v.mask_from_image(mask)
    assert np.array_equal(seen, np.kron(mask[3:3 + ch, 5:5 + cw], np.ones((k, k), bool)))
    assert np.array_equal(v.mask_to_image(seen, (h, w)), crop_only)


def test_mask_from_image_agrees_with_points_from_image():
    v = View.zoom(1, (0, 0, 10, 10), 11, 8.0)  # scale 1.1
    assert v.size == (11, 11)
    pixel = np.zeros((10, 10), bool)
    pixel[4, 4] = True
    (px, py), = v.points_from_image(np.array([[4, 4]]))
    assert (px, py) == (4, 4)
    assert v.mask_from_image(pixel)[py, px]  # fails: the pixel is drawn at view (5, 5)


def test_render_is_the_resampled_crop():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 30:40] = 255
    v = View.zoom(1, (30, 10, 40, 20), 40, 8.0)
    assert v.render(img).shape == (40, 40, 3) and (v.render(img) == 255).all()
    v2 = View.zoom(2, (25, 5, 45, 25), 80, 8.0)  # 20x20 at x4: the white block is the centre 40x40
    out = v2.render(img)
    assert out.shape == (80, 80, 3)
    assert (out[28:52, 28:52] == 255).all() and (out[:12] == 0).all() and (out[:, 68:] == 0).all()


# --- loading images and masks --------------------------------------------------------------------
def _png_bytes(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (with a valid CRC): a decompression bomb header."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    assert png[12:16] == b"IHDR"
    png[16:20] = struct.pack(">I", width)
    png[20:24] = struct.pack(">I", height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    return bytes(png)


@pytest.fixture
def real_jpeg(shared_data) -> Path:
    path = shared_data / "coco128-seg" / "images" / "train2017" / "000000000009.jpg"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def _assert_image_error(path, match: str, **kwargs) -> None:
    with pytest.raises(ImageError, match=match) as info:
        load_image(path, **kwargs)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert isinstance(info.value, RsagentError)


def test_load_real_jpeg(real_jpeg):
    img = load_image(real_jpeg)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8 and img.flags.writeable


def test_load_image_missing_file(tmp_path):
    _assert_image_error(tmp_path / "nope.jpg", "no such file")


def test_load_image_directory(tmp_path):
    _assert_image_error(tmp_path, "is a directory")


@pytest.mark.parametrize("content", [b"", b"hello, this is text\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
                                     b"\xff\xd8\xff" + b"\x00" * 50])
def test_load_image_not_an_image(tmp_path, content):
    path = tmp_path / "file.png"
    path.write_bytes(content)
    _assert_image_error(path, "not a readable image|corrupt|cannot read")


def test_load_image_truncated_jpeg(tmp_path, real_jpeg):
    data = real_jpeg.read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    _assert_image_error(path, "corrupt or truncated")


def test_load_image_decompression_bomb_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(60_000, 60_000))
    # PIL refuses headers over twice its own limit before our check sees the size
    _assert_image_error(path, "possible decompression bomb")


def test_load_image_header_that_lies_about_its_size(tmp_path):
    path = tmp_path / "lie.png"
    path.write_bytes(_png_bytes(3000, 3000))  # under the limit, but there is no pixel data for it
    _assert_image_error(path, "corrupt or truncated")


def test_load_image_max_pixels(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("RGB", (200, 100)).save(path)
    _assert_image_error(path, "200x100 = 20,000 pixels, over the limit of 19,999", max_pixels=19_999)
    assert load_image(path, max_pixels=20_000).shape == (100, 200, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "CMYK"])
def test_load_image_converts_modes_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new("RGB", (9, 5), (200, 100, 50)).convert(mode).save(path)
    img = load_image(path)
    assert img.shape == (5, 9, 3) and img.dtype == np.uint8


def test_save_and_load_mask(tmp_path):
    mask = np.random.default_rng(3).random((30, 40)) < 0.4
    save_mask(tmp_path / "deep" / "m.png", mask)
    raw = np.asarray(Image.open(tmp_path / "deep" / "m.png"))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    assert np.array_equal(load_mask(tmp_path / "deep" / "m.png", size=(40, 30)), mask)
    img = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    save_image(tmp_path / "img.png", img)
    assert np.array_equal(load_image(tmp_path / "img.png"), img)


def test_load_mask_size_mismatch(tmp_path):
    path = tmp_path / "m.png"
    save_mask(path, np.ones((30, 40), bool))
    with pytest.raises(MaskError) as info:
        load_mask(path, size=(41, 30))
    assert str(info.value) == f"{path}: mask is 40x30 but the image is 41x30"


@pytest.mark.parametrize("case", ["missing", "directory", "text", "truncated", "bomb"])
def test_load_mask_errors_are_mask_errors(tmp_path, case):
    path = tmp_path / "m.png"
    if case == "directory":
        path = tmp_path
    elif case == "text":
        path.write_text("not a png")
    elif case == "truncated":
        save_mask(path, np.random.default_rng(0).random((200, 200)) < 0.5)
        path.write_bytes(path.read_bytes()[:400])
    elif case == "bomb":
        path.write_bytes(_png_bytes(50_000, 50_000))
    with pytest.raises(MaskError) as info:
        load_mask(path)
    assert str(path) in str(info.value)


def test_load_mask_modes(tmp_path):
    labels = np.array([[0, 1, 2], [255, 0, 0]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "l.png")
    assert load_mask(tmp_path / "l.png").tolist() == [[False, True, True], [True, False, False]]
    Image.fromarray(labels.astype(np.uint16) * 200).save(tmp_path / "i16.png")
    assert load_mask(tmp_path / "i16.png").tolist() == [[False, True, True], [True, False, False]]
    Image.fromarray(labels > 0).save(tmp_path / "one.png")
    assert load_mask(tmp_path / "one.png").tolist() == [[False, True, True], [True, False, False]]


def test_load_mask_palette_uses_indices_not_colours(tmp_path):
    """A VOC-style palette mask whose label 1 is drawn black is still foreground."""
    from rsagent.core.image import load_mask

    arr = np.zeros((4, 5), np.uint8)
    arr[1:3, 2:4] = 1
    img = Image.fromarray(arr, mode="P")
    img.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 white, index 1 black
    img.save(tmp_path / "p.png")
    assert np.array_equal(load_mask(tmp_path / "p.png"), arr == 1)


def test_box_iou():
    from rsagent.core.mask import box_iou

    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no pixel
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # empty boxes
