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


# --- COCO RLE masks (synth's rl_prompts.jsonl is a manifest) ---------------------------------------
def rle_scene(folder: Path):
    """A 30x40 (h x w) PNG with an L-shaped target and a don't-care band; returns (path, target, ignore)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "scene.png")
    target = np.zeros((30, 40), bool)
    target[5:25, 8:14] = True
    target[19:25, 8:33] = True
    ignore = np.zeros((30, 40), bool)
    ignore[:, 36:] = True
    return folder / "scene.png", target, ignore


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE written out by hand: column-major runs, starting with a run of 0s."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] + runs) if flat[0] else runs}


def test_rle_mask_and_ignore_load_exactly(tmp_path):
    from rsagent.core.mask import GroundTruth
    from rsagent.core.trajectory import Trajectory
    from rsagent.synth.export import rl_prompt_record

    image, target, ignore = rle_scene(tmp_path / "img")
    traj = Trajectory(sample_id="scene-0", query="the L", image={"path": str(image), "width": 40, "height": 30},
                      system_prompt="", user_text="", config={})
    record = {"sample_id": "scene-0", "source": "hand", "source_id": "7", "kind": "shape", "query": "the L"}
    with_ignore = rl_prompt_record(record, traj, GroundTruth(target, ignore), str(image))  # as synth writes it
    assert isinstance(with_ignore["mask"]["counts"], str) and with_ignore["ignore"] is not None
    without = rl_prompt_record({**record, "sample_id": "scene-1"}, traj, GroundTruth(target), str(image))
    assert without["ignore"] is None
    listed = {"sample_id": "scene-2", "image": "../img/scene.png", "query": "the rest",
              "mask": uncompressed_rle(~target), "ignore": uncompressed_rle(ignore)}
    path = tmp_path / "rl" / "rl_prompts.jsonl"
    path.parent.mkdir()
    write_lines(path, [with_ignore, without, listed])
    for samples in (load_manifest(path), load_dataset("manifest", path)):
        assert [s.sample_id for s in samples] == ["scene-0", "scene-1", "scene-2"]
        assert samples[0].image_path == image and samples[2].image_path == path.parent / "../img/scene.png"
        assert samples[0].meta["source"] == "hand" and samples[0].meta["kind"] == "shape"
        assert (samples[0].meta["width"], samples[0].meta["height"], samples[0].meta["line"]) == (40, 30, 1)
        img, gt = samples[0].load()
        assert img.shape == (30, 40, 3)
        assert np.array_equal(gt.mask, target) and np.array_equal(gt.ignore, ignore)
        _, gt = samples[1].load()
        assert np.array_equal(gt.mask, target) and gt.ignore is None
        _, gt = samples[2].load()
        assert np.array_equal(gt.mask, ~target) and np.array_equal(gt.ignore, ignore)


RLE = {"size": [2, 3], "counts": [1, 2, 3]}


@pytest.mark.parametrize("mask, message", [
    ({"counts": "PP0"}, r"line 2: the \"mask\" RLE needs \"size\": \[height, width\]"),
    ({"size": [30, 40]}, r"line 2: the \"mask\" RLE needs \"counts\": a string or a list of integers, got none"),
    ({"size": [30], "counts": "PP0"}, r"line 2: the \"mask\" RLE needs \"size\""),
    ({"size": "30x40", "counts": "PP0"}, r"line 2: the \"mask\" RLE needs \"size\""),
    ({"size": [30, True], "counts": "PP0"}, r"line 2: the \"mask\" RLE needs \"size\""),
    ({"size": [30, -40], "counts": "PP0"}, r"line 2: the \"mask\" RLE needs \"size\""),
    ({"size": [2, 3], "counts": 6}, r"line 2: the \"mask\" RLE needs \"counts\": .* got int"),
    ({"size": [2, 3], "counts": [1, -2, 7]}, r"line 2: the \"mask\" RLE's \"counts\" list must hold non-negative"),
    ({"size": [2, 3], "counts": [1, 2.5, 3]}, r"line 2: the \"mask\" RLE's \"counts\" list must hold non-negative"),
    ({"size": [2, 3], "counts": [1, 2]}, r"line 2: the \"mask\" RLE's counts sum to 3, not height x width = 6"),
    ({"size": [2, 3], "counts": "a b"}, r"line 2: the \"mask\" RLE's \"counts\" string is not a COCO compressed"),
    (7, r"line 2: \"mask\" must be a PNG path or a COCO RLE"),
])
def test_malformed_rle_names_its_line(tmp_path, mask, message):
    path = tmp_path / "m.jsonl"
    bad = {"sample_id": "b", "image": "x.png", "query": "q", "mask": mask}
    write_lines(path, [GOOD, bad])
    with pytest.raises(DatasetError, match=message):
        load_manifest(path)
    write_lines(path, [GOOD, {**bad, "mask": RLE, "ignore": mask}])  # the same checks for "ignore"
    with pytest.raises(DatasetError, match=message.replace("mask", "ignore")):
        load_manifest(path)


def test_rle_of_the_wrong_size_fails_when_the_ground_truth_is_built(tmp_path):
    from rsagent.core.mask import encode_rle

    image, target, _ = rle_scene(tmp_path)
    small = encode_rle(np.ones((10, 12), bool))
    entries = [{"sample_id": "small-mask", "image": str(image), "query": "q", "mask": small},
               {"sample_id": "small-ignore", "image": str(image), "query": "q", "mask": encode_rle(target),
                "ignore": small},
               # valid characters, but runs that cover 27 pixels, not 30 x 40
               {"sample_id": "short", "image": str(image), "query": "q",
                "mask": {"size": [30, 40], "counts": "922035"}}]
    write_lines(tmp_path / "manifest.jsonl", entries)
    samples = load_manifest(tmp_path)  # listing does not know the image's size
    with pytest.raises(DatasetError, match=r"sample 'small-mask' \(.*manifest.jsonl: line 1\): the \"mask\" RLE "
                                           r"has size \[height, width\] = \[10, 12\] but the image is \[30, 40\]"):
        samples[0].load()
    with pytest.raises(DatasetError, match=r"sample 'small-ignore' .*line 2\): the \"ignore\" RLE has size "
                                           r"\[height, width\] = \[10, 12\] but the image is \[30, 40\]"):
        samples[1].load()
    with pytest.raises(DatasetError, match=r"sample 'short' .*: the \"mask\" RLE's counts string does not decode "
                                           r"to 30 x 40 pixels"):
        samples[2].load()
