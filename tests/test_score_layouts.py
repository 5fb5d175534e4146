"""`rsagent score` on datasets in ReasonSeg's and refer_seg's layouts, against an independent LISA-style
implementation written here from the protocol's description (masks drawn and scored by hand)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rsagent.data.yoloseg import load_yolo_seg

# --- the independent reference -------------------------------------------------------------------------


def lisa_label_map(shapes: list[dict], h: int, w: int) -> np.ndarray:
    """LISA's get_mask_from_json: skip flags, draw polygons largest-first, 255 for ignore, 1 otherwise."""
    polys = [s for s in shapes if s["label"].lower() != "flag"]
    areas = []
    for s in polys:
        canvas = np.zeros((h, w), np.uint8)
        pts = np.array([s["points"]], dtype=np.int32)
        cv2.polylines(canvas, pts, True, 1, 1)
        cv2.fillPoly(canvas, pts, 1)
        areas.append(canvas.sum())
    out = np.zeros((h, w), np.uint8)
    for i in np.argsort(areas)[::-1]:
        value = 255 if "ignore" in polys[i]["label"].lower() else 1
        pts = np.array([polys[i]["points"]], dtype=np.int32)
        cv2.polylines(out, pts, True, value, 1)
        cv2.fillPoly(out, pts, value)
    return out


def lisa_scores(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """intersectionAndUnion with ignore_index 255 (ignored pixels taken out of the prediction and the
    target), per-sample IoU with IoU = 1 for an empty union, gIoU = mean, cIoU = sum I / sum U."""
    ious, inter_sum, union_sum = [], 0, 0
    for pred, label in pairs:
        keep = label != 255
        p = (pred > 0) & keep
        t = (label == 1) & keep
        inter = int(np.count_nonzero(p & t))
        union = int(np.count_nonzero(p)) + int(np.count_nonzero(t)) - inter
        ious.append(1.0 if union == 0 else inter / union)
        inter_sum += inter
        union_sum += union
    return float(np.mean(ious)), inter_sum / union_sum


def prediction_from(target: np.ndarray, k: int) -> np.ndarray:
    """A plausible, imperfect prediction: the target shifted, with a spurious square."""
    pred = np.roll(target, (3 * k - 5, 4 - 2 * k), axis=(0, 1)).astype(np.uint8)
    h, w = pred.shape
    pred[h // 3: h // 3 + 20 + 5 * k, w // 4: w // 4 + 30] = 1
    return pred


def run_score(dataset: str, root: Path, split: str, pred: Path, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "rsagent.cli", "score", "--dataset", dataset, "--root", str(root),
                          "--split", split, "--predictions", str(pred), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "summary.json").read_text())


# --- ReasonSeg ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def targets(coco128_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        by_image: dict[str, list] = {}
        for t in load_yolo_seg(coco128_root):
            by_image.setdefault(t.image_path.stem, []).append(t)
    return [by_image[s] for s in sorted(by_image)[5:13]]


def test_score_reasonseg_layout_matches_lisa(targets, tmp_path):
    root, pred = tmp_path / "ReasonSeg", tmp_path / "pred"
    (root / "test").mkdir(parents=True)
    pred.mkdir()
    pairs, ids = [], []
    for k, group in enumerate(targets):
        t = group[0]
        stem = f"img_{k:02d}"
        shutil.copy(t.image_path, root / "test" / f"{stem}.jpg")
        w, h = t.width, t.height
        shapes = [{"label": "target", "points": (g.polygon * [w, h]).tolist(), "shape_type": "polygon"}
                  for g in group[:2]]
        if k % 3 == 1:  # an ignore band across the middle, and a flag that must be skipped
            shapes.append({"label": "ignore", "points": [[0, h * 0.4], [w - 1, h * 0.4], [w - 1, h * 0.5], [0, h * 0.5]]})
            shapes.append({"label": "flag", "points": [[0, 0], [w - 1, 0], [w - 1, h - 1]]})
        if k == 5:
            shapes = [s for s in shapes if s["label"] != "target"]  # no target: an empty ground truth
        (root / "test" / f"{stem}.json").write_text(json.dumps(
            {"text": [f"the thing number {k}", "another phrasing"], "is_sentence": k % 2 == 0, "shapes": shapes}))
        label = lisa_label_map(shapes, h, w)
        predicted = prediction_from(label == 1, k) if k != 5 else np.zeros((h, w), np.uint8)
        if k == 2:
            pass  # missing prediction: scored as empty
        elif k == 3:
            (pred / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable: empty
            predicted = np.zeros_like(predicted)
        elif k == 4:
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[predicted > 0] = (0, 0, 1)  # a dim colour is still foreground
            Image.fromarray(rgb).save(pred / f"{stem}.png")
        else:
            Image.fromarray(predicted * 255).save(pred / f"{stem}.png")
        if k == 2:
            predicted = np.zeros_like(predicted)
        pairs.append((predicted, label))
        ids.append(stem)
    summary = run_score("reasonseg", root, "test", pred, tmp_path / "out")
    giou, ciou = lisa_scores(pairs)
    assert summary["n"] == len(targets) and summary["missing"] == ["img_02"] and summary["unreadable"] == ["img_03"]
    assert summary["gIoU"] == pytest.approx(giou, abs=1e-6) and summary["cIoU"] == pytest.approx(ciou, abs=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in lines) == ids
    assert 0.2 < giou < 0.95  # the predictions are imperfect, not trivial


# --- refer_seg ---------------------------------------------------------------------------------------------


def test_score_refer_layout_matches_pycocotools(shared_data, tmp_path):
    mini = shared_data / "coco-val2017-mini"
    inst = json.loads((mini / "annotations" / "instances_val2017_subset.json").read_text())
    root, pred = tmp_path / "refer_seg", tmp_path / "pred"
    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True)
    (root / "refcocog").mkdir()
    pred.mkdir()
    for img in inst["images"]:
        shutil.copy(mini / "images" / img["file_name"], images_dir / img["file_name"])
    (root / "refcocog" / "instances.json").write_text(json.dumps(inst))
    anns = sorted(inst["annotations"], key=lambda a: -a["area"])[:9]
    refs, expected = [], {}
    for r, ann in enumerate(anns):
        split = "val" if r % 4 else "test"
        sents = [{"sent_id": 100 * r + j, "sent": f"object {r} phrasing {j}", "raw": f"Object {r}.", "tokens": []}
                 for j in range(1 + r % 2)]
        refs.append({"ref_id": 500 + r, "ann_id": ann["id"], "image_id": ann["image_id"], "split": split,
                     "sentences": sents, "category_id": ann["category_id"], "sent_ids": [s["sent_id"] for s in sents]})
        if split != "val":
            continue
        img = next(i for i in inst["images"] if i["id"] == ann["image_id"])
        h, w = img["height"], img["width"]
        seg = ann["segmentation"]
        rles = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) else (
            mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg)
        target = mask_utils.decode(rles)
        target = (target.reshape(h, w, -1).sum(axis=2) > 0).astype(np.uint8)
        for s in sents:
            sid = f"{500 + r}-{s['sent_id']}"
            p = prediction_from(target, r + s["sent_id"] % 7)
            Image.fromarray(p * 255).save(pred / f"{sid}.png")
            expected[sid] = (p, target)
    with open(root / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    summary = run_score("refcocog", root, "val", pred, tmp_path / "out")
    giou, ciou = lisa_scores(list(expected.values()))
    assert summary["n"] == len(expected) and not summary["missing"] and not summary["unreadable"]
    assert summary["gIoU"] == pytest.approx(giou, abs=1e-6) and summary["cIoU"] == pytest.approx(ciou, abs=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in lines) == sorted(expected)
