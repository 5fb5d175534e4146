"""The grabcut segmenter on real COCO128 images: box quality, corrective clicks, mask prompts, cache, errors.

Thresholds come from measurements (see bench/compare_grabcut.py): on the targets below the box alone
averages about 0.51 IoU and the segmenter about 0.74.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth, iou, mask_box
from rsagent.segmenters import make_segmenter
from rsagent.segmenters import grabcut as grabcut_module
from rsagent.segmenters.base import MaskPrompt
from rsagent.segmenters.grabcut import GrabCutSegmenter

# The first eight COCO128 instances covering at least 5% of their image (4 images).
BOX_TARGETS = ("000000000009-0", "000000000009-1", "000000000009-2", "000000000009-3",
               "000000000025-0", "000000000030-0", "000000000030-1", "000000000034-0")


@pytest.fixture(scope="module")
def by_id(coco128_targets):
    return {t.sample_id: t for t in coco128_targets}


@pytest.fixture(scope="module")
def segmenter():
    """One segmenter for the module: images are cached by path, so each is encoded once."""
    return GrabCutSegmenter()


@pytest.fixture(scope="module")
def images():
    cache: dict = {}

    def get(target) -> np.ndarray:
        if target.image_path not in cache:
            cache[target.image_path] = load_image(target.image_path)
        return cache[target.image_path]

    return get


def box_as_mask(shape, box) -> np.ndarray:
    out = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    out[y0:y1, x0:x1] = True
    return out


def largest_error(error: np.ndarray):
    """The largest connected error region and its interior-most pixel (x, y)."""
    count, comp, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
    assert count > 1, "no error region"
    region = comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return region, (int(x), int(y))


def box_prediction(segmenter, images, target):
    gt = target.ground_truth()
    segmenter.set_image(images(target), key=str(target.image_path))
    pred = segmenter.predict(box=mask_box(gt.mask))
    return gt, pred


def test_box_prompt_beats_the_box_itself(segmenter, images, by_id):
    ours, boxes = [], []
    for sid in BOX_TARGETS:
        gt, pred = box_prediction(segmenter, images, by_id[sid])
        assert pred.masks.shape == (1, *gt.shape) and pred.masks.dtype == bool
        assert pred.scores.shape == (1,) and 0.0 <= float(pred.scores[0]) <= 1.0
        assert pred.logits is None
        ours.append(iou(pred.masks[0], gt))
        boxes.append(iou(box_as_mask(gt.shape, mask_box(gt.mask)), gt))
    assert np.mean(boxes) < 0.6  # measured 0.51
    assert np.mean(ours) > 0.68, (ours, boxes)  # measured 0.74
    assert sum(o > b for o, b in zip(ours, boxes)) >= 7


def test_predict_is_deterministic(segmenter, images, by_id):
    target = by_id["000000000030-0"]
    _, first = box_prediction(segmenter, images, target)
    _, second = box_prediction(segmenter, images, target)
    np.testing.assert_array_equal(first.masks, second.masks)
    assert first.scores[0] == second.scores[0]


def test_positive_click_in_a_missed_part_adds_it(segmenter, images, by_id):
    gt, pred = box_prediction(segmenter, images, by_id["000000000030-0"])
    before = pred.masks[0]
    missed, (x, y) = largest_error(gt.mask & ~before)
    after = segmenter.predict(points=np.array([[x, y]]), labels=np.array([1]),
                              mask_prompt=MaskPrompt(before)).masks[0]
    assert after[y, x]
    assert after[missed].mean() > 0.5  # measured 0.69 of the missed part is now foreground
    assert iou(after, gt) > iou(before, gt) + 0.05  # measured 0.78 -> 0.89


def test_negative_click_in_a_false_part_removes_it(segmenter, images, by_id):
    gt, pred = box_prediction(segmenter, images, by_id["000000000009-0"])
    before = pred.masks[0]
    false, (x, y) = largest_error(before & ~gt.mask)
    after = segmenter.predict(points=np.array([[x, y]]), labels=np.array([0]),
                              mask_prompt=MaskPrompt(before)).masks[0]
    assert not after[y, x]
    assert after[false].mean() < 0.5  # measured 0.29 of the false part is left
    assert iou(after, gt) >= iou(before, gt) - 0.005


def test_mask_prompt_is_the_starting_label_map(segmenter, images, by_id):
    target, other = by_id["000000000009-1"], by_id["000000000009-0"]  # two bowls in one image
    gt, boxed = box_prediction(segmenter, images, target)
    pred = segmenter.predict(mask_prompt=MaskPrompt(gt.mask))
    got = pred.masks[0]
    assert iou(got, gt) > 0.85  # measured 0.90: it starts from the given labels and stays near them
    assert iou(got, gt) > iou(boxed.masks[0], gt)
    assert iou(got, other.ground_truth()) < 0.05
    # A different starting map on the same image gives that object instead.
    got_other = segmenter.predict(mask_prompt=MaskPrompt(other.ground_truth().mask)).masks[0]
    assert iou(got_other, other.ground_truth()) > 0.85
    assert iou(got_other, gt) < 0.05


def test_clicks_only_and_negative_only(segmenter, images, by_id):
    target = by_id["000000000030-0"]
    gt, _ = box_prediction(segmenter, images, target)
    inside, (x, y) = largest_error(gt.mask)  # the object's interior-most pixel
    pred = segmenter.predict(points=np.array([[x, y]]), labels=np.array([1]))
    assert pred.masks[0, y, x] and pred.masks[0].sum() > 100
    empty = segmenter.predict(points=np.array([[x, y]]), labels=np.array([0]))
    assert not empty.masks.any() and empty.scores[0] == 0.0


def test_scipy_max_flow_gives_the_same_cut(segmenter, images, by_id, monkeypatch):
    gt, reference = box_prediction(segmenter, images, by_id["000000000025-0"])
    monkeypatch.setattr(grabcut_module, "_maxflow", None)
    scipy_pred = segmenter.predict(box=mask_box(gt.mask))
    assert abs(iou(scipy_pred.masks[0], gt) - iou(reference.masks[0], gt)) < 0.01


def test_large_images_are_encoded_at_a_capped_resolution(images, by_id):
    target = by_id["000000000030-0"]
    image = images(target)
    gt = target.ground_truth()
    big = cv2.resize(image, (image.shape[1] * 2, image.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    big_gt = GroundTruth(cv2.resize(gt.mask.astype(np.uint8), (big.shape[1], big.shape[0]),
                                    interpolation=cv2.INTER_NEAREST).astype(bool))
    seg = GrabCutSegmenter(max_side=640)
    seg.set_image(big)
    assert max(seg._state.labels.shape) == 640
    pred = seg.predict(box=mask_box(big_gt.mask))
    assert pred.masks.shape == (1, big.shape[0], big.shape[1])
    assert iou(pred.masks[0], big_gt) > 0.7  # measured ~0.8 at the original size


def test_tiny_image(images, by_id):
    crop = np.ascontiguousarray(images(by_id["000000000030-0"])[100:112, 200:216])
    seg = GrabCutSegmenter()
    seg.set_image(crop)
    pred = seg.predict(box=(2, 2, 14, 10))
    assert pred.masks.shape == (1, 12, 16)
    assert not pred.masks[0, 0].any()  # outside the box: background


def test_same_key_does_not_re_encode(images, by_id):
    image = images(by_id["000000000009-0"])[:160, :200].copy()
    other = images(by_id["000000000025-0"])[:160, :200].copy()
    seg = make_segmenter("grabcut", cache_size=2)
    assert seg.name == "grabcut" and "slico" in seg.identifier and "gamma" in seg.identifier
    seg.set_image(image, key=("img", 0))
    assert seg.encode_count == 1
    seg.set_image(image, key=("img", 0))
    assert seg.encode_count == 1
    seg.set_image(other, key=("img", 1))
    assert seg.encode_count == 2
    seg.set_image(image, key=("img", 0))  # still cached, and current again
    assert seg.encode_count == 2
    assert seg.predict(box=(20, 20, 120, 120)).masks.shape == (1, 160, 200)
    seg.set_image(other, key=("img", 2))
    seg.set_image(image, key=("img", 3))  # cache_size=2: ("img", 1) was evicted
    seg.set_image(other, key=("img", 1))
    assert seg.encode_count == 5
    seg.set_image(image)  # no key: always encodes
    assert seg.encode_count == 6


def test_bad_calls_raise(images, by_id):
    seg = GrabCutSegmenter()
    with pytest.raises(RuntimeError):
        seg.predict(box=(0, 0, 10, 10))
    image = images(by_id["000000000009-0"])[:120, :160].copy()
    with pytest.raises(ValueError):
        seg.set_image(image.astype(np.float32))
    with pytest.raises(ValueError):
        seg.set_image(image[:, :, 0])
    seg.set_image(image, key="small")
    bad_calls = [
        dict(),  # no prompt
        dict(box=(50, 50, 40, 90)),  # x1 < x0
        dict(box=(200, 200, 300, 300)),  # outside the 160x120 image
        dict(box=(0, 0, float("nan"), 10)),
        dict(box=(0, 0, 10)),
        dict(points=np.array([[10, 10]]), labels=np.array([1, 0])),  # lengths differ
        dict(points=np.array([[10, 10]])),  # no labels
        dict(points=np.array([[10, 10]]), labels=np.array([2])),
        dict(points=np.array([[160, 10]]), labels=np.array([1])),  # x == width
        dict(points=np.array([[-1, 10]]), labels=np.array([1])),
        dict(mask_prompt=MaskPrompt(np.ones((10, 10), bool))),  # wrong shape
    ]
    for kwargs in bad_calls:
        with pytest.raises(ValueError):
            seg.predict(**kwargs)
    with pytest.raises(ValueError):
        GrabCutSegmenter(iterations=0)
