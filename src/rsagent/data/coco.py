"""COCO instances json (+ an optional queries JSONL) as text-guided segmentation samples.

Layout: `ROOT/annotations/instances_<split>.json` (`annotations=` overrides it) and the images in the
first of `ROOT/<split>/`, `ROOT/images/<split>/`, `ROOT/images/`, `ROOT/`, or beside the json, that
holds them. Queries: `ROOT/queries_<split>.jsonl` (`queries=` overrides it), one JSON object a line:
`{"sample_id"?: str, "image_id": int, "ann_ids": [int, ...] (or "ann_id": int), "query": str}`; the
target is the union of those annotations (crowd ones included). Without a queries file: one sample per
non-crowd annotation, query = its category name, sample id `<image_id>-<ann_id>`, and crowd regions of
the same category in the image are ignore pixels. See docs/datasets.md.

`annotation_mask` (one annotation's segmentation -> bool mask, parts merged) is shared with the
RefCOCO loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from rsagent.core.errors import DatasetError
from rsagent.core.mask import GroundTruth, decode_rle
from rsagent.data.base import Sample, read_jsonl

__all__ = ["annotation_mask", "load_coco", "read_instances", "read_json"]


def read_json(path: Path, what: str = "json file"):
    """Parse a JSON file, turning every failure into a one-line DatasetError naming the file."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such {what}") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(f"{path}: not a readable {what} ({exc})") from None


def annotation_mask(segmentation, height: int, width: int, what: str = "annotation") -> np.ndarray:
    """One COCO annotation's segmentation as a bool (height, width) mask, its parts merged (union).

    Polygons (a list of flat [x1, y1, x2, y2, ...] lists) go through `pycocotools.mask.frPyObjects`
    (so a first part of exactly 4 numbers is read as a box, as pycocotools does); an RLE dict (counts
    compressed as str/bytes, or uncompressed as a list) or a list of them is decoded directly. An empty
    list is an empty mask. This is pycocotools' `annToMask` and LISA's refer_seg decoding (which sums
    the parts: the same union wherever parts do not overlap).
    """
    try:
        if isinstance(segmentation, dict):
            parts = [segmentation]
        elif isinstance(segmentation, list):
            if not segmentation:
                return np.zeros((height, width), bool)
            if all(isinstance(p, dict) for p in segmentation):
                parts = segmentation
            elif all(isinstance(p, list) for p in segmentation):
                rles = mask_utils.frPyObjects(segmentation, height, width)
                return mask_utils.decode(rles).any(axis=2)
            else:
                raise DatasetError(f"{what}: segmentation mixes polygons and RLEs")
        else:
            raise DatasetError(f"{what}: segmentation is a {type(segmentation).__name__}, "
                               "expected polygons or an RLE")
        masks = []
        for rle in parts:
            size = [int(v) for v in rle["size"]]
            if size != [height, width]:
                raise DatasetError(f"{what}: RLE size {size[1]}x{size[0]} (w x h) does not match the image's "
                                   f"{width}x{height}")
            masks.append(decode_rle(rle))
        return np.logical_or.reduce(masks)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exceptions on malformed input
        raise DatasetError(f"{what}: malformed segmentation ({type(exc).__name__}: {exc})") from None


def _resolve(path: str | Path, root: Path) -> Path:
    """A user-given file: as given (relative to the working directory), else relative to the root."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        return root / path
    return path


@dataclass(frozen=True)
class _Spec:
    sample_id: str
    image_id: int
    query: str
    target: tuple[int, ...]
    ignore: tuple[int, ...]
    meta: dict


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _query_specs(path: Path, images: dict, anns: dict) -> list[_Spec]:
    specs: list[_Spec] = []
    seen: dict[str, int] = {}
    for lineno, where, rec in read_jsonl(path, "queries file"):
        image_id = rec.get("image_id")
        if not _int(image_id):
            raise DatasetError(f"{where}: 'image_id' must be an integer")
        if image_id not in images:
            raise DatasetError(f"{where}: image_id {image_id} is not in the annotations file")
        if "ann_ids" in rec:
            ann_ids = rec["ann_ids"]
            if not isinstance(ann_ids, list) or not all(_int(a) for a in ann_ids):
                raise DatasetError(f"{where}: 'ann_ids' must be a list of integers")
        elif _int(rec.get("ann_id")):
            ann_ids = [rec["ann_id"]]
        else:
            raise DatasetError(f"{where}: give 'ann_ids' (a list of integers) or 'ann_id'")
        for ann_id in ann_ids:
            if ann_id not in anns:
                raise DatasetError(f"{where}: annotation {ann_id} is not in the annotations file")
            if anns[ann_id]["image_id"] != image_id:
                raise DatasetError(f"{where}: annotation {ann_id} belongs to image {anns[ann_id]['image_id']}, "
                                   f"not {image_id}")
        query = rec.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DatasetError(f"{where}: 'query' must be a non-empty string")
        sample_id = rec.get("sample_id")
        if sample_id is None:
            sample_id = f"{image_id}-{'+'.join(map(str, ann_ids)) or 'empty'}"
        elif not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool) or str(sample_id) == "":
            raise DatasetError(f"{where}: 'sample_id' must be a non-empty string")
        sample_id = str(sample_id)
        if sample_id in seen:
            raise DatasetError(f"{where}: sample id {sample_id!r} repeats line {seen[sample_id]}; "
                               "give each line its own 'sample_id'")
        seen[sample_id] = lineno
        extra = {k: v for k, v in rec.items() if k not in ("sample_id", "image_id", "ann_ids", "ann_id", "query")}
        meta = {**extra, "image_id": image_id, "ann_ids": list(ann_ids), "line": lineno}
        specs.append(_Spec(sample_id, image_id, query, tuple(ann_ids), (), meta))
    return specs


def _category_specs(images: dict, anns: dict, categories: dict, ann_path: Path) -> list[_Spec]:
    crowds: dict[tuple[int, int], list[int]] = {}
    for ann in anns.values():
        if ann.get("iscrowd"):
            crowds.setdefault((ann["image_id"], ann["category_id"]), []).append(ann["id"])
    specs = []
    for ann in sorted(anns.values(), key=lambda a: (a["image_id"], a["id"])):
        if ann.get("iscrowd"):
            continue
        image_id, cat = ann["image_id"], ann["category_id"]
        if image_id not in images:
            raise DatasetError(f"{ann_path}: annotation {ann['id']} refers to image {image_id}, which is not listed")
        if cat not in categories:
            raise DatasetError(f"{ann_path}: annotation {ann['id']} has category {cat}, which is not listed")
        ignore = tuple(sorted(crowds.get((image_id, cat), ())))
        meta = {"image_id": image_id, "ann_id": ann["id"], "category_id": cat, "category": categories[cat],
                "ignore_ann_ids": list(ignore)}
        specs.append(_Spec(f"{image_id}-{ann['id']}", image_id, categories[cat], (ann["id"],), ignore, meta))
    return specs


def _image_dir(root: Path, split: str, ann_path: Path, file_names: list[str]) -> Path:
    """The first candidate folder holding the first image, checked to hold them all."""
    base = ann_path.parent.parent
    candidates: list[Path] = []
    for d in (root / split, root / "images" / split, root / "images", root, ann_path.parent,
              ann_path.parent / "images", base / split, base / "images" / split, base / "images"):
        if d not in candidates:
            candidates.append(d)
    image_dir = next((d for d in candidates if (d / file_names[0]).is_file()), None)
    if image_dir is None:
        raise DatasetError(f"image {file_names[0]} not found; looked in {', '.join(map(str, candidates))}")
    missing = sorted({f for f in file_names if not (image_dir / f).is_file()})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"{image_dir}: {len(missing)} of the images the samples need are missing: {shown}")
    return image_dir


def read_instances(path: Path, what: str) -> tuple[dict, dict, dict]:
    """A COCO instances json as (images by id, annotations by id, category names by id); every
    annotation must have image_id, category_id and segmentation, every image file_name and size."""
    data = read_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
    try:
        images = {img["id"]: img for img in data["images"]}
        anns = {ann["id"]: ann for ann in data["annotations"]}
        categories = {c["id"]: c["name"] for c in data.get("categories", [])}
        missing = next((f"annotation {a.get('id')} lacks '{k}'" for a in anns.values()
                        for k in ("image_id", "category_id", "segmentation") if k not in a), None) or \
            next((f"image {i.get('id')} lacks '{k}'" for i in images.values()
                  for k in ("file_name", "height", "width") if k not in i), None)
    except (KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: malformed images, annotations or categories ({exc!r})") from None
    if missing:
        raise DatasetError(f"{path}: {missing}")
    return images, anns, categories


def load_coco(root: str | Path, split: str = "val2017", annotations: str | Path | None = None,
              queries: str | Path | None = None) -> list[Sample]:
    """Samples from a COCO instances json: the queries file's lines in order, or one per non-crowd
    annotation ordered by (image id, annotation id). See the module docstring for the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such COCO dataset folder")
    if annotations is not None:
        ann_path = _resolve(annotations, root)
        if not ann_path.is_file():
            raise DatasetError(f"{ann_path}: no such annotations file")
    else:
        ann_path = root / "annotations" / f"instances_{split}.json"
        if not ann_path.is_file():
            ann_dir = root / "annotations"
            found = sorted(p.name for p in ann_dir.glob("*.json")) if ann_dir.is_dir() else []
            raise DatasetError(f"{ann_path}: no such annotations file (json files in {ann_dir}: "
                               f"{', '.join(found) or 'none'}); pass annotations= to choose one")
    images, anns, categories = read_instances(ann_path, "COCO annotations file")

    if queries is not None:
        q_path = _resolve(queries, root)
        if not q_path.is_file():
            raise DatasetError(f"{q_path}: no such queries file")
    else:
        q_path = root / f"queries_{split}.jsonl"
    if q_path.is_file():
        specs = _query_specs(q_path, images, anns)
        source = str(q_path)
    else:
        specs = _category_specs(images, anns, categories, ann_path)
        source = "categories"
    if not specs:
        raise DatasetError(f"{q_path if source != 'categories' else ann_path}: no samples")
    image_dir = _image_dir(root, split, ann_path, [images[s.image_id]["file_name"] for s in specs])

    samples = []
    for spec in specs:
        img = images[spec.image_id]
        image_path = image_dir / img["file_name"]
        load_gt = AnnotationsGroundTruth(image_path, ann_path.name, int(img["height"]), int(img["width"]),
                                     tuple(anns[a] for a in spec.target), tuple(anns[a] for a in spec.ignore))
        samples.append(Sample(spec.sample_id, image_path, spec.query, load_gt,
                              {**spec.meta, "queries": source}))
    return samples


@dataclass(frozen=True, eq=False)
class AnnotationsGroundTruth:
    """`load_gt` of one sample: the union of the target annotations; ignore = the union of the ignore
    annotations (COCO: same-category crowds) minus the target. RefCOCO uses it with one target."""

    image_path: Path
    source: str
    height: int
    width: int
    target: tuple
    ignore: tuple

    def _union(self, anns: tuple) -> np.ndarray:
        mask = np.zeros((self.height, self.width), bool)
        for ann in anns:
            mask |= annotation_mask(ann["segmentation"], self.height, self.width,
                                    f"{self.source}: annotation {ann.get('id')}")
        return mask

    def __call__(self, height: int, width: int) -> GroundTruth:
        check_size(self.image_path, height, width, self.height, self.width, self.source)
        mask = self._union(self.target)
        ignore = self._union(self.ignore) & ~mask if self.ignore else None
        return GroundTruth(mask, ignore if ignore is not None and ignore.any() else None)


def check_size(image_path: Path, height: int, width: int, ann_height: int, ann_width: int, source: str) -> None:
    """The image as decoded must have the size its annotation file gives (masks are drawn at that size)."""
    if (height, width) != (ann_height, ann_width):
        raise DatasetError(f"{image_path}: the image is {width}x{height} but {source} gives "
                           f"{ann_width}x{ann_height} (width x height)")
