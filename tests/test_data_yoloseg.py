"""The YOLO-seg dataset (`load_dataset("yoloseg")`) and the instance lists synthesis writes queries from
(`load_instance_images`), on real COCO128-seg labels and the real COCO mini json, laid out in tmp folders
as the datasets ship. Masks are checked against a by-hand rasterisation and pycocotools' own API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from rsagent.core.errors import DatasetError
from rsagent.data import DATASETS, load_dataset
from rsagent.data.instances import INSTANCE_SOURCES, load_instance_images
from rsagent.data.yoloseg import COCO80

MINI = "coco-val2017-mini"
MINI_JSON = "annotations/instances_val2017_subset.json"
STEMS = ("000000000009", "000000000025", "000000000030")  # bowls, broccoli, oranges; giraffes; a vase and a plant


@pytest.fixture()
def small_root(coco128_root: Path, tmp_path: Path) -> Path:
    """Three real images with their real labels, in the YOLO-seg layout, split `val`."""
    root = tmp_path / "yolo"
    for sub in ("images", "labels"):
        (root / sub / "val").mkdir(parents=True)
    for stem in STEMS:
        shutil.copy(coco128_root / "images" / "train2017" / f"{stem}.jpg", root / "images" / "val")
        shutil.copy(coco128_root / "labels" / "train2017" / f"{stem}.txt", root / "labels" / "val")
    return root


def by_hand(line: str, width: int, height: int) -> np.ndarray:
    """A label line drawn as the loader promises: normalised -> pixels, rounded, cv2.fillPoly."""
    xy = np.array(line.split()[1:], np.float64).reshape(-1, 2) * [width, height]
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(xy).astype(np.int32)], 1)
    return canvas.astype(bool)


def test_yoloseg_is_a_dataset_with_one_sample_per_instance(coco128_root: Path):
    assert "yoloseg" in DATASETS and INSTANCE_SOURCES == ("coco", "yoloseg")
    with pytest.warns(UserWarning, match="2 label files .* have no image"):
        samples = load_dataset("yoloseg", coco128_root)  # the default split: the only one, train2017
    assert len(samples) == 929
    assert [s.sample_id for s in samples] == sorted((s.sample_id for s in samples),
                                                    key=lambda i: (i.split("-")[0], int(i.split("-")[1])))
    first = samples[0]
    line = (coco128_root / "labels" / "train2017" / "000000000009.txt").read_text().splitlines()[0]
    assert first.sample_id == "000000000009-0" and first.query == f"the {COCO80[int(line.split()[0])]}" == "the bowl"
    assert first.meta == {"stem": "000000000009", "line": 0, "class_id": 45, "category": "bowl", "split": "train2017"}
    image, gt = first.load()
    assert np.array_equal(gt.mask, by_hand(line, image.shape[1], image.shape[0])) and gt.ignore is None
    with pytest.raises(DatasetError, match=r"000000000009.jpg: the image is 480x640 but its header gives 640x480"):
        first.load_gt(640, 480)


def test_yoloseg_default_and_missing_splits(small_root: Path):
    samples = load_dataset("yoloseg", small_root)  # the only split folder: val
    assert {s.image_path.stem for s in samples} == set(STEMS) and samples[0].meta["split"] == "val"
    lines = (small_root / "labels" / "val" / f"{STEMS[1]}.txt").read_text().splitlines()
    s = next(s for s in samples if s.sample_id == f"{STEMS[1]}-1")
    image, gt = s.load()
    assert np.array_equal(gt.mask, by_hand(lines[1], image.shape[1], image.shape[0]))
    (small_root / "labels" / "test").mkdir()
    with pytest.raises(DatasetError, match=r"expected labels/train2017/ and images/train2017/ \(label splits found: "
                                           r"test, val\)"):
        load_dataset("yoloseg", small_root)
    assert len(load_dataset("yoloseg", small_root, "val")) == len(samples)


@pytest.mark.parametrize("line, message", [
    ("80 0.1 0.1 0.5 0.1 0.5 0.5", r"line 2: class 80 is not one of COCO's 80 class ids"),
    ("1.5 0.1 0.1 0.5 0.1 0.5 0.5", r"line 2: class 1.5 is not one of"),
    ("3 0.1 0.1 0.5 zero 0.5 0.5", r"line 2: expected 'class x1 y1 x2 y2 \.\.\.' numbers"),
    ("3 0.1 0.1 0.5 nan 0.5 0.5", r"line 2: coordinates must be finite"),
])
def test_yoloseg_bad_label_lines(small_root: Path, line: str, message: str):
    label = small_root / "labels" / "val" / f"{STEMS[0]}.txt"
    label.write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n" + line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset("yoloseg", small_root)


def test_yoloseg_other_errors(small_root: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="no such YOLO-seg dataset folder"):
        load_dataset("yoloseg", tmp_path / "nowhere")
    (small_root / "images" / "val" / f"{STEMS[0]}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=f"{STEMS[0]}.jpg: not a readable image"):
        load_dataset("yoloseg", small_root)
    for f in (small_root / "labels" / "val").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"labels/val: no \.txt label files"):
        load_dataset("yoloseg", small_root)


def test_cli_scores_a_yoloseg_split(small_root: Path, tmp_path: Path):
    """`rsagent score --dataset yoloseg`: the CLI takes its choices from DATASETS; exact masks score 1."""
    pred = tmp_path / "pred"
    pred.mkdir()
    samples = load_dataset("yoloseg", small_root)
    for s in samples:
        Image.fromarray(s.load()[1].mask.astype(np.uint8) * 255).save(pred / f"{s.sample_id}.png")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "rsagent.cli", "score", "--dataset", "yoloseg",
                          "--root", str(small_root), "--predictions", str(pred), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == len(samples) and summary["gIoU"] == 1.0 and summary["cIoU"] == 1.0


# --- instance lists --------------------------------------------------------------------------------------
def test_instance_images_yoloseg(small_root: Path):
    images = load_instance_images("yoloseg", small_root)
    assert [i.image_id for i in images] == list(STEMS) and all(i.source == "yoloseg" for i in images)
    img = images[1]
    lines = (small_root / "labels" / "val" / f"{STEMS[1]}.txt").read_text().splitlines()
    assert [i.ann_id for i in img.instances] == list(range(len(lines))) == [i.index for i in img.instances]
    assert [i.category for i in img.instances] == [COCO80[int(line.split()[0])] for line in lines]
    xy = np.array(lines[0].split()[1:], np.float64).reshape(-1, 2) * [img.width, img.height]
    inst = img.instances[0]
    assert inst.box == pytest.approx((*xy.min(axis=0), *xy.max(axis=0)))
    drawn = int(img.mask(0).sum())
    assert inst.area == pytest.approx(cv2.contourArea(xy.astype(np.float32)), rel=1e-5)
    assert abs(drawn - inst.area) < 0.05 * inst.area  # shoelace and raster agree up to the outline
    assert not any(i.crowd for im in images for i in im.instances)


def test_instance_images_coco(shared_data: Path):
    root = shared_data / MINI
    api = COCO(str(root / MINI_JSON))
    images = load_instance_images("coco", root, annotations=MINI_JSON)
    assert [i.image_id for i in images] == [str(i) for i in sorted(api.getImgIds())]
    assert all(i.image_path.parent == root / "images" and i.source == "coco" for i in images)
    for img in images:
        anns = sorted(api.loadAnns(api.getAnnIds(imgIds=int(img.image_id))), key=lambda a: a["id"])
        assert [i.ann_id for i in img.instances] == [a["id"] for a in anns]
        for inst, ann in zip(img.instances, anns):
            x, y, w, h = ann["bbox"]
            assert inst.box == (x, y, x + w, y + h) and inst.area == ann["area"]
            assert inst.category == api.loadCats(ann["category_id"])[0]["name"] and inst.crowd == bool(ann["iscrowd"])
    crowd = [(img.image_id, i.ann_id) for img in images for i in img.instances if i.crowd]
    assert crowd == [("193245", 900100193245)]


def test_instance_images_errors(shared_data: Path, small_root: Path, tmp_path: Path):
    root = shared_data / MINI
    with pytest.raises(DatasetError, match="'reasonseg' has no instance lists; choose one of coco, yoloseg"):
        load_instance_images("reasonseg", root)
    with pytest.raises(DatasetError, match=r"instances_val2017.json: no such annotations file; pass annotations="):
        load_instance_images("coco", root)
    doc = json.loads((root / MINI_JSON).read_text())
    del doc["annotations"][3]["bbox"]
    bad = tmp_path / "coco" / "annotations" / "bad.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(doc))
    shutil.copytree(root / "images", tmp_path / "coco" / "images")
    with pytest.raises(DatasetError, match=r"bad.json: annotation \d+: needs 'bbox' \[x, y, w, h\] and 'area' numbers"):
        load_instance_images("coco", tmp_path / "coco", annotations="annotations/bad.json")
    # stems that differ only by characters an id cannot hold collide
    for stem in ("a b", "a_b"):
        shutil.copy(small_root / "images" / "val" / f"{STEMS[0]}.jpg", small_root / "images" / "val" / f"{stem}.jpg")
        shutil.copy(small_root / "labels" / "val" / f"{STEMS[0]}.txt", small_root / "labels" / "val" / f"{stem}.txt")
    with pytest.raises(DatasetError, match=r"a b.jpg and a_b.jpg both get the image id 'a_b'"):
        load_instance_images("yoloseg", small_root)
