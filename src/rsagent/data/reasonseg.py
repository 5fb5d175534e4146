"""ReasonSeg in LISA's layout: `ROOT/{train,val,test}/<stem>.jpg` each with `<stem>.json`.

The json holds `text` (queries; the sample's query is `text[0]`), `is_sentence` and `shapes`
(`label` target / ignore / flag, polygon `points` in pixels). One sample per json, sample id = the
stem, sorted by stem. The ground truth is LISA's `get_mask_from_json` label map (1 target, 255
ignore), drawn the same way; see `reasonseg_label_map` and docs/datasets.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.mask import GroundTruth
from rsagent.data.base import Sample

__all__ = ["IMAGE_SUFFIXES", "load_reasonseg", "read_reasonseg_json", "reasonseg_label_map"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # in order of preference when a stem has several
IGNORE_VALUE = 255


def read_reasonseg_json(path: Path) -> dict:
    """Parse one annotation json (UTF-8, or cp1252 as LISA falls back to) and check its fields."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    try:
        try:
            anno = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError:
            anno = json.loads(raw.decode("cp1252"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable ReasonSeg json ({exc})") from None
    if not isinstance(anno, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'text' and 'shapes'")
    text = anno.get("text")
    if not isinstance(text, list) or not text or not all(isinstance(t, str) for t in text):
        raise DatasetError(f"{path}: 'text' must be a non-empty list of strings")
    shapes = anno.get("shapes")
    if not isinstance(shapes, list):
        raise DatasetError(f"{path}: 'shapes' must be a list")
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise DatasetError(f"{path}: shape {k} has no string 'label'")
        pts = shape.get("points")
        try:
            arr = np.asarray(pts, np.float64)
        except (TypeError, ValueError):
            arr = np.empty((0,))
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 2 or not np.isfinite(arr).all():
            raise DatasetError(f"{path}: shape {k} ({shape['label']!r}) needs 'points' as a list of [x, y] pairs")
    return anno


def _polygons(anno: dict) -> list[tuple[int, np.ndarray]]:
    """(value, int32 points) of every non-flag shape, in json order: 255 when the label contains
    "ignore", else 1 (LISA's rule, case-insensitive; a label equal to "flag" is skipped)."""
    out = []
    for shape in anno["shapes"]:
        label = shape["label"].lower()
        if label == "flag":
            continue
        # LISA casts with np.array(points, dtype=np.int32): truncation toward zero
        pts = np.asarray(shape["points"], np.float64).astype(np.int32).reshape(1, -1, 2)
        out.append((IGNORE_VALUE if "ignore" in label else 1, pts))
    return out


def reasonseg_label_map(polygons: list[tuple[int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """LISA's uint8 label map: every polygon's area is the pixel count of it drawn alone (closed
    outline of thickness 1, then filled), polygons are drawn largest first (ties in the order
    `np.argsort(areas)[::-1]` gives, as LISA does) each as outline then fill, later ones on top."""
    scratch = np.zeros((height, width), np.uint8)
    areas = []
    for _, pts in polygons:
        scratch[:] = 0
        cv2.polylines(scratch, pts, True, 1, 1)
        cv2.fillPoly(scratch, pts, 1)
        areas.append(int(np.count_nonzero(scratch)))
    labels = scratch
    labels[:] = 0
    # LISA's areas are numpy uint64 sums; sort the same dtype so ties break the same way
    for index in np.argsort(np.asarray(areas, np.uint64))[::-1]:
        value, pts = polygons[int(index)]
        cv2.polylines(labels, pts, True, value, 1)
        cv2.fillPoly(labels, pts, value)
    return labels


@dataclass(frozen=True, eq=False)
class _ReasonSegMask:
    polygons: tuple

    def __call__(self, height: int, width: int) -> GroundTruth:
        return GroundTruth.from_label_map(reasonseg_label_map(list(self.polygons), height, width))


def _splits(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and next(d.glob("*.json"), None) is not None)


def load_reasonseg(root: str | Path, split: str = "val") -> list[Sample]:
    """One sample per `<stem>.json` of `ROOT/<split>/`, sorted by stem; its image is the same stem
    with .jpg, .jpeg or .png. The json is read (and checked) now; the mask is drawn by `load_gt`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such ReasonSeg folder")
    split_dir = root / split
    if not split_dir.is_dir():
        found = _splits(root)
        hint = ""
        if not found:
            nested = sorted(d.name for d in root.iterdir() if d.is_dir() and _splits(d))
            hint = f"; did you mean {root / nested[0]}?" if nested else \
                "; the root is the folder holding train/, val/ and test/"
        raise DatasetError(f"{root}: no split folder {split!r} (splits found: {', '.join(found) or 'none'}){hint}")
    images: dict[str, Path] = {}
    jsons: list[Path] = []
    for p in split_dir.iterdir():
        suffix = p.suffix.lower()
        if suffix == ".json":
            jsons.append(p)
        elif suffix in IMAGE_SUFFIXES:
            old = images.get(p.stem)
            if old is None or IMAGE_SUFFIXES.index(suffix) < IMAGE_SUFFIXES.index(old.suffix.lower()):
                images[p.stem] = p
    if not jsons:
        raise DatasetError(f"{split_dir}: no annotation .json files in split {split!r}")
    jsons.sort(key=lambda p: p.stem)
    missing = [p.stem for p in jsons if p.stem not in images]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(f"{split_dir}: {len(missing)} json files have no image "
                           f"({'/'.join(IMAGE_SUFFIXES)}): {shown}")
    samples = []
    for path in jsons:
        anno = read_reasonseg_json(path)
        meta = {"text": list(anno["text"]), "is_sentence": anno.get("is_sentence"), "split": split}
        samples.append(Sample(path.stem, images[path.stem], anno["text"][0],
                              _ReasonSegMask(tuple(_polygons(anno))), meta))
    return samples
