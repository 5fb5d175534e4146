"""The manifest loader, and `build_manifest`, which the other eval tests use to make small real datasets.

`build_manifest` copies COCO128 images (shrunk so that tests are fast) into a folder with a
manifest.jsonl; targets are the images' polygons, given as polygons or as mask PNGs drawn with PIL
(independently of rsagent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rsagent.core.errors import DatasetError, MaskError
from rsagent.data import load_dataset
from rsagent.data.manifest import load_manifest


def pick_targets(targets, n: int, min_area: float = 0.05, max_area: float = 0.6, stride: int = 5):
    """n fixed targets that cover a fair part of their image (no zoom needed after shrinking)."""
    chosen = [t for t in targets if min_area <= t.area_fraction <= max_area][::stride][:n]
    if len(chosen) < n:
        pytest.skip(f"only {len(chosen)} suitable COCO128 targets")
    return chosen


def draw_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rasterise with PIL, independently of rsagent's cv2 path."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1, outline=1)
    return np.asarray(canvas) > 0


def build_manifest(folder: Path, targets, *, side: int = 256, as_masks: bool = False, split: str | None = None,
                   ignore_band: bool = False) -> list[dict]:
    """Write images/, masks/ and manifest.jsonl under `folder`; returns the manifest entries.

    Each image is shrunk to `side` pixels on its long side. With `as_masks`, targets are PNGs (and
    with `ignore_band`, an ignore PNG: a band along the target's top rows); else pixel polygons.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    entries = []
    for t in targets:
        with Image.open(t.image_path) as im:
            scale = side / max(im.size)
            size = (round(im.size[0] * scale), round(im.size[1] * scale))
            image_name = f"images/{Path(t.image_path).stem}.png"
            if not (folder / image_name).exists():
                im.convert("RGB").resize(size, Image.BILINEAR).save(folder / image_name)
        points = t.polygon * np.array(size)
        entry = {"sample_id": t.sample_id, "image": image_name, "query": t.query}
        if as_masks:
            mask = draw_polygon(points, *size)
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"masks/{t.sample_id}.png")
            entry["mask"] = f"masks/{t.sample_id}.png"
            if ignore_band:
                rows = np.flatnonzero(mask.any(axis=1))
                band = np.zeros_like(mask)
                band[rows[0]:rows[0] + max(2, len(rows) // 6)] = True
                Image.fromarray(band.astype(np.uint8) * 255).save(folder / f"masks/{t.sample_id}-ignore.png")
                entry["ignore"] = f"masks/{t.sample_id}-ignore.png"
        else:
            entry["polygons"] = [points.ravel().round(2).tolist()]
        if split:
            entry["split"] = split
        entries.append(entry)
    write_lines(folder / "manifest.jsonl", entries)
    return entries


def write_lines(path: Path, entries: list) -> None:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))


@pytest.fixture(scope="module")
def targets(coco128_targets):
    return pick_targets(coco128_targets, 4)


def test_polygons_and_masks_give_the_same_ground_truth(targets, tmp_path):
    poly_entries = build_manifest(tmp_path / "poly", targets)
    build_manifest(tmp_path / "png", targets, as_masks=True)
    by_polygon = load_manifest(tmp_path / "poly")                       # a folder holding manifest.jsonl
    by_mask = load_dataset("manifest", tmp_path / "png" / "manifest.jsonl")  # the file itself, via the registry
    assert [s.sample_id for s in by_polygon] == [t.sample_id for t in targets]
    assert [s.query for s in by_mask] == [t.query for t in targets]
    for a, b, entry in zip(by_polygon, by_mask, poly_entries):
        assert a.image_path == tmp_path / "poly" / entry["image"]       # relative to the manifest's folder
        image, gt_a = a.load()
        _, gt_b = b.load()
        assert gt_a.shape == image.shape[:2] and gt_a.ignore is None
        # cv2 (rounded vertices) and PIL rasterise borders differently: same object, a few border pixels apart
        inter = np.logical_and(gt_a.mask, gt_b.mask).sum()
        assert inter / np.logical_or(gt_a.mask, gt_b.mask).sum() > 0.9
        assert gt_a.mask.mean() > 0.03
        assert a.meta["line"] == poly_entries.index(entry) + 1


def test_ignore_png_and_empty_target(targets, tmp_path):
    entries = build_manifest(tmp_path, targets[:2], as_masks=True, ignore_band=True)
    entries.append({"sample_id": "nothing", "image": entries[0]["image"], "query": "a unicorn", "polygons": [],
                    "source": "hand-written"})
    write_lines(tmp_path / "manifest.jsonl", entries)
    samples = load_manifest(tmp_path / "manifest.jsonl")
    _, gt = samples[0].load()
    ignore = np.asarray(Image.open(tmp_path / entries[0]["ignore"])) > 0
    assert gt.ignore is not None and np.array_equal(gt.ignore, ignore)
    _, empty = samples[2].load()
    assert not empty.mask.any() and empty.ignore is None
    assert samples[2].meta["source"] == "hand-written"


def test_split_filter(targets, tmp_path):
    entries = build_manifest(tmp_path, targets, split="val")
    entries[1]["split"] = "test"
    write_lines(tmp_path / "manifest.jsonl", entries)
    assert len(load_manifest(tmp_path)) == 4
    assert [s.sample_id for s in load_manifest(tmp_path, "test")] == [targets[1].sample_id]
    assert len(load_manifest(tmp_path, "val")) == 3
    with pytest.raises(DatasetError, match=r"no line has \"split\": 'train' \(splits found: test, val\)"):
        load_manifest(tmp_path, "train")


def test_mask_of_the_wrong_size_fails_at_load(targets, tmp_path):
    entries = build_manifest(tmp_path, targets[:1], as_masks=True)
    Image.new("L", (10, 10), 255).save(tmp_path / entries[0]["mask"])
    (sample,) = load_manifest(tmp_path)
    with pytest.raises(MaskError, match="mask is 10x10"):
        sample.load()


GOOD = {"sample_id": "a", "image": "x.png", "query": "the cat", "polygons": [[0, 0, 5, 0, 5, 5]]}


@pytest.mark.parametrize("line, message", [
    ("{not json", r"line 2: not valid JSON"),
    ("[1, 2]", r"line 2: expected a JSON object"),
    (json.dumps({"image": "x.png", "query": "q", "polygons": []}), r"line 2: missing \"sample_id\""),
    (json.dumps({"sample_id": "b", "image": "x.png", "polygons": []}), r"line 2: missing \"query\""),
    (json.dumps({"sample_id": "b", "query": "q", "polygons": []}), r"line 2: missing \"image\""),
    (json.dumps({**GOOD}), r"line 2: sample_id 'a' already used on line 1"),
    (json.dumps({**GOOD, "sample_id": 7}), r"line 2: \"sample_id\" must be a non-empty string"),
    (json.dumps({**GOOD, "sample_id": "b", "query": " "}), r"line 2: \"query\" must be a non-empty string"),
    (json.dumps({"sample_id": "b", "image": "x.png", "query": "q"}), r"line 2: give exactly one of"),
    (json.dumps({**GOOD, "sample_id": "b", "mask": "m.png"}), r"line 2: give exactly one of"),
    (json.dumps({**GOOD, "sample_id": "b", "polygons": [[0, 0, 1, 1]]}), r"line 2: polygon 0 must be"),
    (json.dumps({**GOOD, "sample_id": "b", "polygons": [0, 0, 1, 1, 2, 2]}), r"line 2: polygon 0 must be"),
    (json.dumps({**GOOD, "sample_id": "b", "image": ""}), r"line 2: \"image\" must be a non-empty path"),
    (json.dumps({**GOOD, "sample_id": "b", "split": 3}), r"line 2: \"split\" must be a string"),
])
def test_malformed_lines_name_their_line(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_manifest(path)


def test_missing_manifest(tmp_path):
    with pytest.raises(DatasetError, match="a folder without manifest.jsonl"):
        load_manifest(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load_manifest(tmp_path / "nope.jsonl")
