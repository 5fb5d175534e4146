"""Evaluation dataset loaders (ReasonSeg, RefCOCO family, COCO) on real images and real COCO annotations,
laid out in tmp folders exactly as the datasets ship. Masks are checked against rasterisations written
here: hand-computed pixel sets, a by-hand replay of LISA's drawing order, and pycocotools' own COCO API."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from rsagent.core.errors import DatasetError
from rsagent.data import load_dataset
from rsagent.data.coco import load_coco
from rsagent.data.reasonseg import load_reasonseg
from rsagent.data.refer import load_refer

MINI = "coco-val2017-mini"
MINI_JSON = "annotations/instances_val2017_subset.json"
EXAMPLE = "reasonseg-format-example/101677526_e9a3ba3ae1_o.json"
CROWD = 900100193245  # the crowd RLE (uncompressed counts) on image 193245, category person
CROWD_PIXELS = 710  # the sum of its foreground runs (its json "area" says 743)
MULTI = (2004314, 2162630, 1121612, 1276019)  # two-part polygon annotations (images 176857, 424349, 193245)


@pytest.fixture(scope="module")
def mini(shared_data: Path) -> Path:
    root = shared_data / MINI
    if not (root / MINI_JSON).is_file():
        pytest.skip(f"{root} not available")
    return root


@pytest.fixture(scope="module")
def instances(mini: Path) -> dict:
    return json.loads((mini / MINI_JSON).read_text())


@pytest.fixture(scope="module")
def coco_api(mini: Path) -> COCO:
    """pycocotools' own reading of the real annotations: the independent reference for masks."""
    return COCO(str(mini / MINI_JSON))


# --- ReasonSeg ---------------------------------------------------------------------------------------
def shape(template: dict, label: str, points) -> dict:
    """A shape in the exact ReasonSeg (labelme) form, copied from the real example's first shape."""
    s = copy.deepcopy(template)
    s.update(label=label, labels=[label], points=[[float(x), float(y)] for x, y in points])
    return s


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def lisa_by_hand(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """LISA's get_mask_from_json replayed step by step (no ties in these tests, so a plain sort)."""
    polys = [(255 if "ignore" in s["label"].lower() else 1, np.array([s["points"]], dtype=np.int32))
             for s in shapes if s["label"].lower() != "flag"]

    def drawn_area(pts):
        alone = np.zeros((height, width), np.uint8)
        cv2.polylines(alone, pts, True, 1, 1)
        cv2.fillPoly(alone, pts, 1)
        return int(alone.sum())

    out = np.zeros((height, width), np.uint8)
    for value, pts in sorted(polys, key=lambda p: -drawn_area(p[1])):
        cv2.polylines(out, pts, True, value, 1)
        cv2.fillPoly(out, pts, value)
    return out


@pytest.fixture(scope="module")
def reasonseg_root(tmp_path_factory, shared_data: Path, mini: Path) -> Path:
    """val/ with four samples on real images (one stored as PNG) and train/ with one; jsons in the real format."""
    example = json.loads((shared_data / EXAMPLE).read_text())
    tpl = example["shapes"][0]
    # in a parent of its own: the error test points one level too high and must find only this folder there
    # (pytest's base temp also holds other fixtures' folders, whose .json files look like splits)
    root = tmp_path_factory.mktemp("reasonseg") / "ReasonSeg"
    val, train = root / "val", root / "train"
    val.mkdir(parents=True)
    train.mkdir()

    def write(folder: Path, stem: str, image: str, text: list[str], is_sentence: bool, shapes: list[dict],
              png: bool = False, encoding: str = "utf-8") -> None:
        src = mini / "images" / image
        if png:
            Image.open(src).save(folder / f"{stem}.png")
        else:
            shutil.copy(src, folder / f"{stem}.jpg")
        doc = {"text": text, "is_sentence": is_sentence, "shapes": shapes}
        (folder / f"{stem}.json").write_bytes(json.dumps(doc, ensure_ascii=False, indent=2).encode(encoding))

    # the real example json verbatim, on a real 640x480 image (its polygon reaches y = 477)
    shutil.copy(mini / "images" / "000000573008.jpg", val / "101677526_e9a3ba3ae1_o.jpg")
    shutil.copy(shared_data / EXAMPLE, val / "101677526_e9a3ba3ae1_o.json")
    # overlapping target / ignore / target, plus a flag over everything; json order != drawing order;
    # fractional coordinates are truncated (200.7 -> 200), not rounded
    write(val, "100706138_4dd951b10b_o", "000000166563.jpg",
          ["What part of the cake is used to write birthday greetings?", "the writing area"], True,
          [shape(tpl, "target", rect(70, 60, 90.9, 80.5)), shape(tpl, "flag", rect(0, 0, 639, 407)),
           shape(tpl, "Ignore", rect(50, 40, 120, 100)), shape(tpl, "target", rect(10.9, 10, 200.7, 150)),
           shape(tpl, "target", [(300, 200), (400.6, 380.2), (250.5, 390)])])
    # no target at all: an ignore region and a flag only; the image is a PNG
    write(val, "2_no_target", "000000409630.jpg", ["the unicorn"], False,
          [shape(tpl, "ignore", rect(5, 5, 40, 30)), shape(tpl, "flag", rect(100, 100, 200, 200))], png=True)
    # non-ASCII query in a cp1252 json (LISA's fallback encoding)
    write(val, "3_cafe", "000000182202.jpg", ["la tasse à café, s'il vous plaît", "the cup"], False,
          [shape(tpl, "target", rect(100, 50, 160, 120))], encoding="cp1252")
    write(train, "train_0", "000000193245.jpg", ["¿dónde está el 杯子?"], False, [])
    return root


def test_reasonseg_samples_ids_queries_and_meta(reasonseg_root: Path):
    samples = load_reasonseg(reasonseg_root, "val")
    assert [s.sample_id for s in samples] == ["100706138_4dd951b10b_o", "101677526_e9a3ba3ae1_o", "2_no_target",
                                              "3_cafe"]
    assert [s.image_path.name for s in samples] == ["100706138_4dd951b10b_o.jpg", "101677526_e9a3ba3ae1_o.jpg",
                                                    "2_no_target.png", "3_cafe.jpg"]
    assert samples[0].query == "What part of the cake is used to write birthday greetings?"
    assert samples[0].meta["text"] == ["What part of the cake is used to write birthday greetings?",
                                       "the writing area"]
    assert samples[0].meta["is_sentence"] is True
    assert samples[1].query == "something used for playing videos or music"
    assert samples[1].meta["is_sentence"] is False
    assert samples[3].query == "la tasse à café, s'il vous plaît"
    train = load_dataset("reasonseg", reasonseg_root, "train")
    assert [(s.sample_id, s.query) for s in train] == [("train_0", "¿dónde está el 杯子?")]
    assert [s.sample_id for s in load_dataset("reasonseg", reasonseg_root)] == [s.sample_id for s in samples]


def test_reasonseg_overlaps_drawn_largest_first_with_ignore(reasonseg_root: Path):
    sample = load_reasonseg(reasonseg_root, "val")[0]
    image, gt = sample.load()
    assert image.shape == (408, 640, 3) and gt.mask.shape == (408, 640)
    shapes = json.loads((reasonseg_root / "val" / "100706138_4dd951b10b_o.json").read_text())["shapes"]
    expected = lisa_by_hand(shapes, 408, 640)
    # the rectangles by hand: outline + fill of an integer rectangle covers [x0, x1] x [y0, y1]
    labels = np.zeros((408, 640), np.uint8)
    labels[10:151, 10:201] = 1  # big target (10.9 -> 10, 200.7 -> 200)
    labels[40:101, 50:121] = 255  # "Ignore" drawn over it (smaller)
    labels[60:81, 70:91] = 1  # small target drawn last (smallest)
    triangle = lisa_by_hand([shapes[4]], 408, 640) == 1
    labels[triangle] = 1  # the triangle overlaps nothing
    assert np.array_equal(expected, labels)
    assert np.array_equal(gt.mask, labels == 1)
    assert np.array_equal(gt.ignore, labels == 255)
    assert int(gt.ignore.sum()) == 61 * 71 - 21 * 21
    assert int(gt.mask.sum()) == 141 * 191 - 61 * 71 + 21 * 21 + int(triangle.sum())


def test_reasonseg_real_example_and_empty_targets(reasonseg_root: Path, shared_data: Path):
    samples = {s.sample_id: s for s in load_reasonseg(reasonseg_root, "val")}
    _, gt = samples["101677526_e9a3ba3ae1_o"].load()
    shapes = json.loads((shared_data / EXAMPLE).read_text())["shapes"]
    expected = lisa_by_hand(shapes, 480, 640)
    assert np.array_equal(gt.mask, expected == 1) and gt.ignore is None
    assert 40_000 < int(gt.mask.sum()) < 80_000  # the media player on the left of the image
    # only ignore + flag: empty target, the ignore rectangle kept
    _, gt = samples["2_no_target"].load()
    assert gt.mask.shape == (375, 500) and not gt.mask.any()
    assert int(gt.ignore.sum()) == 36 * 26
    _, gt = samples["3_cafe"].load()
    assert int(gt.mask.sum()) == 61 * 71 and gt.ignore is None
    _, gt = load_reasonseg(reasonseg_root, "train")[0].load()
    assert not gt.mask.any() and gt.ignore is None


def test_reasonseg_equal_areas_break_ties_as_lisa(mini: Path, shared_data: Path, tmp_path: Path):
    """LISA draws in `np.argsort(areas)[::-1]` order: of two equal areas the later shape is drawn
    first, so the earlier one in the json ends on top."""
    tpl = json.loads((shared_data / EXAMPLE).read_text())["shapes"][0]
    (tmp_path / "val").mkdir()
    box = rect(20, 30, 60, 50)
    for stem, labels in (("a", ["target", "ignore"]), ("b", ["ignore", "target"])):
        shutil.copy(mini / "images" / "000000409630.jpg", tmp_path / "val" / f"{stem}.jpg")
        doc = {"text": ["q"], "is_sentence": False, "shapes": [shape(tpl, label, box) for label in labels]}
        (tmp_path / "val" / f"{stem}.json").write_text(json.dumps(doc))
    first, second = (s.load()[1] for s in load_reasonseg(tmp_path, "val"))
    assert int(first.mask.sum()) == 41 * 21 and first.ignore is None
    assert not second.mask.any() and int(second.ignore.sum()) == 41 * 21


def test_reasonseg_errors(reasonseg_root: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="no such ReasonSeg folder"):
        load_reasonseg(tmp_path / "nowhere", "val")
    with pytest.raises(DatasetError, match=r"no split folder 'test' \(splits found: train, val\)"):
        load_reasonseg(reasonseg_root, "test")
    # pointing one level too high gets a hint
    with pytest.raises(DatasetError, match="did you mean .*ReasonSeg"):
        load_reasonseg(reasonseg_root.parent, "val")
    root = tmp_path / "rs"
    (root / "test").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no annotation .json files in split 'test'"):
        load_reasonseg(root, "test")
    shutil.copy(reasonseg_root / "val" / "3_cafe.json", root / "test" / "lonely.json")
    shutil.copy(reasonseg_root / "val" / "3_cafe.json", root / "test" / "alone.json")
    with pytest.raises(DatasetError, match="2 json files have no image .*: alone, lonely"):
        load_reasonseg(root, "test")
    shutil.copy(reasonseg_root / "val" / "3_cafe.jpg", root / "test" / "alone.jpg")
    shutil.copy(reasonseg_root / "val" / "3_cafe.jpg", root / "test" / "lonely.jpg")
    (root / "test" / "lonely.json").write_text('{"text": ["x"], "shapes": [{"label": "target", "points": 3}]}')
    with pytest.raises(DatasetError, match=r"lonely.json: shape 0 \('target'\) needs 'points'"):
        load_reasonseg(root, "test")
    (root / "test" / "lonely.json").write_text('{"text": ["x"], ')
    with pytest.raises(DatasetError, match="lonely.json: not a readable ReasonSeg json"):
        load_reasonseg(root, "test")


# --- RefCOCO family ----------------------------------------------------------------------------------
def py2_pickle(obj) -> bytes:
    """What Python 2's cPickle (protocol 2) writes for dicts, lists, ints, str (bytes here) and unicode."""
    out = bytearray(b"\x80\x02")

    def put(o):
        if isinstance(o, int):
            if -2 ** 31 <= o < 2 ** 31:
                out.extend(b"J" + struct.pack("<i", o))
            else:
                data = o.to_bytes((o.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(data)]) + data)
        elif isinstance(o, bytes):  # a Python 2 str
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, str):  # a Python 2 unicode
            data = o.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                put(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        else:
            raise TypeError(type(o))

    put(obj)
    return bytes(out + b".")


def as_py2_str(o):
    if isinstance(o, str):
        return o.encode("latin-1")
    if isinstance(o, list):
        return [as_py2_str(x) for x in o]
    if isinstance(o, dict):
        return {as_py2_str(k): as_py2_str(v) for k, v in o.items()}
    return o


def make_ref(ref_id: int, ann: dict, split: str, sents: list[tuple[int, str]]) -> dict:
    """A ref as the `refer` API's pickles hold it."""
    return {"image_id": ann["image_id"], "split": split, "ann_id": ann["id"], "ref_id": ref_id,
            "category_id": ann["category_id"], "file_name": f"COCO_train2014_{ann['image_id']:012d}_{ann['id']}.jpg",
            "sent_ids": [s for s, _ in sents],
            "sentences": [{"tokens": text.split(), "raw": text.capitalize() + ".", "sent_id": s, "sent": text}
                          for s, text in sents]}


REFER_IMAGES = (193245, 176857, 424349)


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory, mini: Path, instances: dict) -> Path:
    root = tmp_path_factory.mktemp("refer_seg")
    image_dir = root / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    images = []
    for img in instances["images"]:
        if img["id"] in REFER_IMAGES:
            img = dict(img, file_name=f"COCO_train2014_{img['id']:012d}.jpg")
            shutil.copy(mini / "images" / f"{img['id']:012d}.jpg", image_dir / img["file_name"])
            images.append(img)
    anns = {a["id"]: a for a in instances["annotations"] if a["image_id"] in REFER_IMAGES}
    # one polygon annotation stored as a compressed RLE (str counts), as some instances files do
    compressed = copy.deepcopy(anns[1215948])
    h, w = 426, 640
    rle = mask_utils.merge(mask_utils.frPyObjects(compressed["segmentation"], h, w))
    compressed["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    anns[1215948] = compressed
    doc = {"info": instances["info"], "licenses": instances["licenses"], "images": images,
           "annotations": list(anns.values()), "categories": instances["categories"]}
    a = anns
    refcoco = [make_ref(7, a[2004314], "val", [(70, "person on the left"), (71, "guy in red")]),
               make_ref(3, a[1121612], "testA", [(30, "the teddy bear")]),
               make_ref(12, a[CROWD], "val", [(120, "crowd in the back")]),
               make_ref(5, a[1276019], "train", [(50, "small kid")]),
               make_ref(9, a[1215948], "val", [(90, "man holding the bear")]),
               make_ref(2, a[1276019], "val", [(20, "the kid in two pieces")])]
    refcoco[1]["sentences"][0]["sent"] = "the café bear"  # non-ASCII, a Python 2 str in latin-1
    refcocog = [make_ref(40, a[2162630], "val", [(400, "a person partly hidden behind another person")]),
                make_ref(41, a[1127173], "test", [(410, "a brown teddy bear sitting on the right")])]
    for name, refs_file, refs in (("refcoco", "refs(unc).p", refcoco), ("refcoco+", "refs(unc).p", refcoco),
                                  ("refcocog", "refs(umd).p", refcocog)):
        (root / name).mkdir()
        (root / name / "instances.json").write_text(json.dumps(doc))
        if name == "refcoco":  # as shipped: a Python 2 pickle
            data = py2_pickle(as_py2_str(refs))
        else:  # re-saved by Python 3, protocol 2
            data = pickle.dumps(refs, protocol=2)
        (root / name / refs_file).write_bytes(data)
    return root


def test_refer_samples_order_ids_and_queries(refer_root: Path):
    samples = load_refer(refer_root, "refcoco", "val")
    assert [s.sample_id for s in samples] == ["7-70", "7-71", "12-120", "9-90", "2-20"]
    assert [s.query for s in samples] == ["person on the left", "guy in red", "crowd in the back",
                                          "man holding the bear", "the kid in two pieces"]
    assert samples[0].image_path == (refer_root / "images/mscoco/images/train2014/COCO_train2014_000000176857.jpg")
    assert samples[0].meta["ann_id"] == 2004314 and samples[0].meta["raw"] == "Person on the left."
    test_a = load_dataset("refcoco", refer_root, "testA")
    assert [(s.sample_id, s.query) for s in test_a] == [("3-30", "the café bear")]
    assert [s.sample_id for s in load_dataset("refcoco+", refer_root, "val")] == [s.sample_id for s in samples]
    assert [s.sample_id for s in load_dataset("refcocog", refer_root, "test")] == ["41-410"]


def test_refer_masks_match_pycocotools(refer_root: Path, coco_api: COCO):
    samples = load_refer(refer_root, "refcoco", "val") + load_refer(refer_root, "refcocog", "val")
    for sample in samples:
        image, gt = sample.load()
        ann = coco_api.loadAnns(sample.meta["ann_id"])[0]
        expected = coco_api.annToMask(ann).astype(bool)
        assert gt.mask.shape == image.shape[:2] and gt.ignore is None
        assert np.array_equal(gt.mask, expected), sample.sample_id
        # LISA's own decoding: sum of the decoded parts, as uint8
        if isinstance(ann["segmentation"], list):
            parts = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], *gt.mask.shape))
            assert np.array_equal(gt.mask, parts.sum(axis=2).astype(np.uint8) > 0)
    by_id = {s.sample_id: s for s in samples}
    assert int(by_id["12-120"].load()[1].mask.sum()) == CROWD_PIXELS
    two_parts = by_id["2-20"].load()[1].mask
    n, _ = cv2.connectedComponents(two_parts.astype(np.uint8))
    assert n - 1 == 2 and abs(int(two_parts.sum()) - 938.7) / 938.7 < 0.1
    # the annotation stored as a compressed RLE decodes to its polygons' mask
    rle_sample = by_id["9-90"]
    assert np.array_equal(rle_sample.load()[1].mask, coco_api.annToMask(coco_api.loadAnns(1215948)[0]) > 0)


def test_refer_errors(refer_root: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="no such refer_seg folder"):
        load_refer(tmp_path / "nowhere", "refcoco", "val")
    with pytest.raises(DatasetError, match=r"no refs in split 'testB' \(splits present: testA, train, val\)"):
        load_refer(refer_root, "refcoco", "testB")
    with pytest.raises(DatasetError, match="unknown dataset 'refclef'"):
        load_dataset("refclef", refer_root, "val")
    root = tmp_path / "refer_seg"
    shutil.copytree(refer_root, root, ignore=shutil.ignore_patterns("*.jpg"))
    with pytest.raises(DatasetError, match="COCO_train2014_000000176857.jpg: no such image"):
        load_refer(root, "refcoco", "val")
    (root / "refcocog" / "refs(umd).p").rename(root / "refcocog" / "refs(google).p")
    with pytest.raises(DatasetError, match=r"refs\(umd\).p: no such refs pickle .*holds: instances.json, "
                                           r"refs\(google\).p"):
        load_refer(root, "refcocog", "val")
    (root / "refcoco+" / "instances.json").unlink()
    with pytest.raises(DatasetError, match="instances.json: no such instances file"):
        load_refer(root, "refcoco+", "val")
    shutil.rmtree(root / "refcoco+")
    with pytest.raises(DatasetError, match=r"no refcoco\+/ folder \(found: images/, refcoco/, refcocog/\)"):
        load_refer(root, "refcoco+", "val")
    # a pickle that would run code is refused, and nothing runs
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(DatasetError, match="not a readable refs pickle .*refusing to load"):
        load_refer(root, "refcoco", "val")
    assert not marker.exists()


def test_refer_image_size_mismatch_is_an_error_at_load(refer_root: Path, tmp_path: Path):
    root = tmp_path / "refer_seg"
    shutil.copytree(refer_root, root)
    doc = json.loads((root / "refcoco" / "instances.json").read_text())
    for img in doc["images"]:
        if img["id"] == 176857:
            img["height"], img["width"] = img["width"], img["height"]
    (root / "refcoco" / "instances.json").write_text(json.dumps(doc))
    sample = load_refer(root, "refcoco", "val")[0]
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000176857.jpg: the image is 500x375 but "
                                           r"refcoco/instances.json gives 375x500"):
        sample.load()


# --- COCO ----------------------------------------------------------------------------------------------
def test_coco_one_sample_per_instance_with_crowd_ignore(mini: Path, coco_api: COCO):
    samples = load_dataset("coco", mini, "val2017", annotations=MINI_JSON)
    non_crowd = sorted((a["image_id"], a["id"]) for a in coco_api.dataset["annotations"] if not a["iscrowd"])
    assert len(samples) == 76 == len(non_crowd)
    assert [s.sample_id for s in samples] == [f"{i}-{a}" for i, a in non_crowd]
    assert all(s.image_path.parent == mini / "images" for s in samples)
    crowd_ann = coco_api.loadAnns(CROWD)[0]
    crowd = coco_api.annToMask(crowd_ann).astype(bool)
    assert int(crowd.sum()) == CROWD_PIXELS == sum(crowd_ann["segmentation"]["counts"][1::2])
    for sample in samples:
        ann = coco_api.loadAnns(sample.meta["ann_id"])[0]
        assert sample.query == coco_api.loadCats(ann["category_id"])[0]["name"]
        if sample.meta["image_id"] != 193245 and sample.meta["ann_id"] not in MULTI:
            continue  # decode the images with a crowd or a multi-part instance (the rest is the same code)
        _, gt = sample.load()
        expected = coco_api.annToMask(ann).astype(bool)
        assert np.array_equal(gt.mask, expected), sample.sample_id
        if ann["image_id"] == 193245 and ann["category_id"] == 1:  # people beside a crowd of people
            assert sample.meta["ignore_ann_ids"] == [CROWD]
            assert np.array_equal(gt.ignore, crowd & ~expected)
        else:
            assert gt.ignore is None


def test_coco_queries_file_standard_layout(mini: Path, instances: dict, tmp_path: Path, coco_api: COCO):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    keep = {193245, 424349}
    doc = dict(instances, images=[i for i in instances["images"] if i["id"] in keep],
               annotations=[a for a in instances["annotations"] if a["image_id"] in keep])
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    for image_id in keep:
        shutil.copy(mini / "images" / f"{image_id:012d}.jpg", root / "val2017")
    lines = [{"image_id": 193245, "ann_ids": [1276019, CROWD], "query": "the child and the crowd behind"},
             {"sample_id": "bears", "image_id": 424349, "ann_ids": [1121612, 1127173], "query": "both teddy bears",
              "is_sentence": False},
             {"image_id": 424349, "ann_id": 1215948, "query": "l'homme à gauche"}]
    (root / "queries_val2017.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n")
    samples = load_coco(root, "val2017")
    assert [s.sample_id for s in samples] == [f"193245-1276019+{CROWD}", "bears", "424349-1215948"]
    assert [s.query for s in samples] == [x["query"] for x in lines]
    assert samples[1].meta["is_sentence"] is False and samples[1].meta["ann_ids"] == [1121612, 1127173]
    assert samples[0].image_path == root / "val2017" / "000000193245.jpg"
    for sample in samples:
        _, gt = sample.load()
        expected = np.zeros_like(gt.mask)
        for ann in coco_api.loadAnns(sample.meta["ann_ids"]):
            expected |= coco_api.annToMask(ann).astype(bool)
        assert np.array_equal(gt.mask, expected) and gt.ignore is None  # crowd referenced = target
    assert int(samples[0].load()[1].mask.sum()) > CROWD_PIXELS
    # without the queries file: one per instance of the two images
    (root / "queries_val2017.jsonl").rename(root / "my_queries.jsonl")
    assert len(load_coco(root, "val2017")) == 32 - 1
    assert len(load_coco(root, "val2017", queries=root / "my_queries.jsonl")) == 3


def test_coco_errors(mini: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="no such COCO dataset folder"):
        load_coco(tmp_path / "nowhere", "val2017")
    with pytest.raises(DatasetError, match=r"instances_val2017.json: no such annotations file \(json files in "
                                           r".*: instances_val2017_subset.json\)"):
        load_coco(mini, "val2017")
    with pytest.raises(DatasetError, match="no such queries file"):
        load_coco(mini, "val2017", annotations=MINI_JSON, queries=tmp_path / "none.jsonl")
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(mini / MINI_JSON, root / "annotations" / "instances_val2017.json")
    with pytest.raises(DatasetError, match=r"image 000000074646.jpg not found; looked in .*coco/val2017, "
                                           r".*coco/images/val2017, .*coco/images"):
        load_coco(root, "val2017")
    queries = root / "q.jsonl"
    for line, message in [('{"image_id": 193245, "ann_ids": [449272], "query": "x"}',
                           "q.jsonl: line 1: annotation 449272 belongs to image 424349, not 193245"),
                          ('{"image_id": 193245, "ann_ids": [1], "query": "x"}', "annotation 1 is not in"),
                          ('{"image_id": 193245, "query": "x"}', "give 'ann_ids'"),
                          ('{"image_id": 193245, "ann_id": 1276019}', "'query' must be a non-empty string"),
                          ('{"image_id": 193245, "ann_id": 1276019, "query": "x"', "q.jsonl: line 1: not valid JSON"),
                          (('{"image_id": 193245, "ann_id": 1276019, "query": "x"}\n'
                            '{"image_id": 193245, "ann_ids": [1276019], "query": "y"}'),
                           "q.jsonl: line 2: sample id '193245-1276019' repeats line 1")]:
        queries.write_text(line)
        with pytest.raises(DatasetError, match=message):
            load_coco(root, "val2017", queries=queries)
