"""The grabcut segmenter (GrabCut on superpixels) against plain cv2.grabCut on COCO128 targets.

    .venv/bin/python bench/compare_grabcut.py [--n 40] [--clicks 6] [--min-area 0.01]
        [--no-cv] [--maxflow auto|scipy] [--data PATH]

Targets: COCO128-seg instances covering at least `--min-area` of their image, every k-th of them in
file order so that `--n` are taken. Prompt: the ground truth's tight box. Prints box-only mIoU of
  - the box itself as the mask,
  - cv2.grabCut(GC_INIT_WITH_RECT, 5 iterations), raw and with an empty result replaced by the box
    (it collapses to nothing on many small objects),
  - this project's `grabcut` segmenter,
with seconds per prompt, the segmenter's encode / predict split, and the ratio of a prompt on an
already encoded image to the first prompt on it (encode + predict). Then a click simulation: after
the box prediction, a click at the interior-most point of the largest error region (positive in a
missed part, negative in a false one), with the previous mask as the mask prompt, `--clicks` times;
mean IoU after each click. `--maxflow scipy` forces scipy's max-flow even when PyMaxflow is installed.
The default run takes about a minute on 2 CPU cores (cv2.grabCut is most of it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from rsagent.core.image import load_image
from rsagent.core.mask import deepest_point, iou, mask_box
from rsagent.data.yoloseg import load_yolo_seg
from rsagent.segmenters import grabcut as grabcut_module
from rsagent.segmenters.base import MaskPrompt
from rsagent.segmenters.grabcut import GrabCutSegmenter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg"


def select_targets(root: Path, n: int, min_area: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # coco128-seg: two label files without an image
        targets = [t for t in load_yolo_seg(root) if t.area_fraction >= min_area]
    step = max(1, len(targets) // n)
    return targets[::step][:n], len(targets)


def box_mask(shape: tuple[int, int], box) -> np.ndarray:
    out = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    out[y0:y1, x0:x1] = True
    return out


def cv_grabcut(image: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros(image.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, 5,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # e.g. a box covering the whole image leaves no background sample
        return box_mask(image.shape[:2], box)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def next_click(pred: np.ndarray, gt: np.ndarray):
    """The interior-most point of the largest error region, labelled to correct it; None if perfect."""
    best = None
    for err, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        count, comp, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=8)
        if count < 2:
            continue
        j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if best is None or stats[j, cv2.CC_STAT_AREA] > best[0]:
            best = (stats[j, cv2.CC_STAT_AREA], comp == j, label)
    if best is None:
        return None
    return deepest_point(best[1])[0], best[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="targets")
    ap.add_argument("--clicks", type=int, default=6, help="corrective clicks to simulate (0: none)")
    ap.add_argument("--min-area", type=float, default=0.01, help="smallest target, fraction of the image")
    ap.add_argument("--no-cv", action="store_true", help="skip cv2.grabCut (the slow part)")
    ap.add_argument("--maxflow", choices=("auto", "scipy"), default="auto")
    ap.add_argument("--data", type=Path, default=DATA, help="coco128-seg folder")
    args = ap.parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"no COCO128-seg data at {args.data}", file=sys.stderr)
        return 2
    if args.maxflow == "scipy":
        grabcut_module._maxflow = None
    backend = "PyMaxflow (BK)" if grabcut_module._maxflow is not None else "scipy maximum_flow"

    targets, total = select_targets(args.data, args.n, args.min_area)
    seg = GrabCutSegmenter()
    # Warm-up (imports, first allocations), not counted.
    warm = load_image(targets[0].image_path)
    seg.set_image(warm, key="warmup")
    seg.predict(box=(0, 0, warm.shape[1] // 2, warm.shape[0] // 2))

    ious: dict[str, list[float]] = {"box": [], "cv": [], "cv_fallback": [], "ours": []}
    t_encode: list[float] = []
    t_first_predict: list[float] = []
    t_predict: list[float] = []  # every predict on an already encoded image (later targets, clicks)
    t_cv: list[float] = []
    curve: list[list[float]] = [[] for _ in range(args.clicks + 1)]
    images: dict[Path, np.ndarray] = {}
    for target in targets:
        image = images.get(target.image_path)
        if image is None:
            image = images.setdefault(target.image_path, load_image(target.image_path))
        gt = target.ground_truth()
        box = mask_box(gt.mask)
        ious["box"].append(iou(box_mask(gt.shape, box), gt))

        before = seg.encode_count
        t0 = time.perf_counter()
        seg.set_image(image, key=str(target.image_path))
        t1 = time.perf_counter()
        pred = seg.predict(box=box).masks[0]
        t2 = time.perf_counter()
        if seg.encode_count > before:
            t_encode.append(t1 - t0)
            t_first_predict.append(t2 - t1)
        else:
            t_predict.append(t2 - t1)
        ious["ours"].append(iou(pred, gt))
        curve[0].append(ious["ours"][-1])

        points: list[tuple[int, int]] = []
        labels: list[int] = []
        for k in range(args.clicks):
            click = next_click(pred, gt.mask)
            if click is None:
                curve[k + 1].append(curve[k][-1])
                continue
            points.append(click[0])
            labels.append(click[1])
            t0 = time.perf_counter()
            pred = seg.predict(points=np.array(points), labels=np.array(labels), mask_prompt=MaskPrompt(pred)).masks[0]
            t_predict.append(time.perf_counter() - t0)
            curve[k + 1].append(iou(pred, gt))

        if not args.no_cv:
            t0 = time.perf_counter()
            cvm = cv_grabcut(image, box)
            t_cv.append(time.perf_counter() - t0)
            ious["cv"].append(iou(cvm, gt))
            ious["cv_fallback"].append(iou(cvm if cvm.any() else box_mask(gt.shape, box), gt))

    mean = statistics.fmean
    first = mean(t_encode) + mean(t_first_predict)
    print(f"{len(targets)} COCO128 targets (of {total} with area >= {args.min_area:.0%}), tight GT box as the prompt")
    print(f"segmenter: {seg.identifier}; max-flow: {backend}")
    print(f"{'method':44s} {'mIoU':>6s} {'s/prompt':>9s}")
    print(f"{'box as the mask':44s} {mean(ious['box']):6.3f} {'-':>9s}")
    if t_cv:
        collapsed = sum(1 for v in ious["cv"] if v == 0.0)
        print(f"{'cv2.grabCut, 5 iterations':44s} {mean(ious['cv']):6.3f} {mean(t_cv):9.3f}")
        print(f"{f'cv2.grabCut, empty -> box ({collapsed} empty)':44s} {mean(ious['cv_fallback']):6.3f} {mean(t_cv):9.3f}")
    print(f"{'grabcut segmenter, first prompt on an image':44s} {mean(ious['ours']):6.3f} {first:9.3f}")
    if t_predict:
        print(f"{'grabcut segmenter, later prompts':44s} {'':6s} {mean(t_predict):9.3f}")
    print(f"encode {mean(t_encode) * 1000:.0f} ms (n={len(t_encode)}), first predict "
          f"{mean(t_first_predict) * 1000:.1f} ms, predict on an encoded image "
          f"{mean(t_predict) * 1000 if t_predict else float('nan'):.1f} ms (n={len(t_predict)})")
    if t_predict:
        print(f"ratio later prompt / first prompt (encode + predict): {mean(t_predict) / first:.3f}")
    if args.clicks:
        print("click simulation, mean IoU after k clicks (k = 0..{}): {}".format(
            args.clicks, " ".join(f"{mean(c):.3f}" for c in curve)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
