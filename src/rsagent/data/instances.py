"""Images with their full instance lists (category, box, area, segmentation): the sources from which
synthesis writes its own queries (COCO instances, YOLO-seg polygons).

A `Sample` carries one query and one target; an `InstanceImage` carries everything annotated in one
image, so that a generated query can be checked to single out exactly its target set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.mask import polygons_to_mask
from rsagent.data.coco import _image_dir, _resolve, annotation_mask, read_instances
from rsagent.data.yoloseg import PolygonTarget, default_split, load_yolo_seg

__all__ = ["INSTANCE_SOURCES", "Box", "Instance", "InstanceImage", "load_instance_images"]

INSTANCE_SOURCES = ("coco", "yoloseg")

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels (continuous edges)


@dataclass(frozen=True)
class Instance:
    """One annotated object. `index` is its position in `InstanceImage.instances`."""

    index: int
    category: str
    box: Box
    area: float  # pixels (the annotation's own area, or the polygon's shoelace area)
    crowd: bool = False
    segmentation: Any = field(default=None, repr=False, compare=False)  # COCO polygons/RLE, or pixel polygons
    ann_id: int | str | None = None  # the id in the source annotation file, for provenance


@dataclass(frozen=True)
class InstanceImage:
    """One image and every instance annotated in it, in the source's order."""

    image_id: str  # unique within the source; safe to use in sample ids (letters, digits, . _ -)
    image_path: Path
    width: int
    height: int
    instances: tuple[Instance, ...]
    source: str = ""  # dataset name, e.g. "coco" or "yoloseg"

    def mask(self, index: int) -> np.ndarray:
        """Bool (height, width) mask of one instance (parts merged), rasterised exactly as the same
        dataset's `load_dataset` loader draws that instance's ground truth."""
        inst = self.instances[index]
        if self.source == "coco":  # COCO polygons or RLE, as data.coco.AnnotationsGroundTruth decodes them
            return annotation_mask(inst.segmentation, self.height, self.width,
                                   f"{self.image_path.name}: annotation {inst.ann_id}")
        if self.source == "yoloseg":  # pixel polygons, as data.yoloseg.PolygonTarget.ground_truth draws them
            return polygons_to_mask([inst.segmentation], self.height, self.width)
        raise DatasetError(f"{self.image_id}: no mask drawing for instance source {self.source!r}")

    def union(self, indices) -> np.ndarray:
        out = np.zeros((self.height, self.width), bool)
        for i in indices:
            out |= self.mask(i)
        return out


def load_instance_images(name: str, root: str | Path, split: str | None = None, *,
                         annotations: str | Path | None = None) -> list[InstanceImage]:
    """Every image of `split` with at least one instance, ordered as the dataset's loader orders
    its samples (COCO: image id; YOLO-seg: file stem); instances in the source's order (COCO:
    annotation id; YOLO-seg: line). `annotations` overrides COCO's instances json."""
    if name == "coco":
        return _coco_images(Path(root), split or "val2017", annotations)
    if name == "yoloseg":
        return _yoloseg_images(Path(root), split or default_split(root))
    raise DatasetError(f"{name!r} has no instance lists; choose one of {', '.join(INSTANCE_SOURCES)}")


def _coco_annotations_path(root: Path, split: str, annotations: str | Path | None) -> Path:
    path = _resolve(annotations, root) if annotations is not None else root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        hint = "" if annotations is not None else "; pass annotations= to choose the instances json"
        raise DatasetError(f"{path}: no such annotations file{hint}")
    return path


def _coco_instance(index: int, ann: dict, category: str, where: str) -> Instance:
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
        area = float(ann["area"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: needs 'bbox' [x, y, w, h] and 'area' numbers") from None
    return Instance(index, category, (x, y, x + w, y + h), area, bool(ann.get("iscrowd")), ann["segmentation"],
                    ann["id"])


def _coco_images(root: Path, split: str, annotations: str | Path | None) -> list[InstanceImage]:
    if not root.is_dir():
        raise DatasetError(f"{root}: no such COCO dataset folder")
    ann_path = _coco_annotations_path(root, split, annotations)
    images, anns, categories = read_instances(ann_path, "COCO annotations file")
    by_image: dict = {}
    for ann in sorted(anns.values(), key=lambda a: (a["image_id"], a["id"])):
        where = f"{ann_path}: annotation {ann['id']}"
        if ann["image_id"] not in images:
            raise DatasetError(f"{where} refers to image {ann['image_id']}, which is not listed")
        if ann["category_id"] not in categories:
            raise DatasetError(f"{where} has category {ann['category_id']}, which is not listed")
        by_image.setdefault(ann["image_id"], []).append(ann)
    if not by_image:
        raise DatasetError(f"{ann_path}: no annotations")
    image_dir = _image_dir(root, split, ann_path, [images[i]["file_name"] for i in by_image])
    out = []
    for image_id, image_anns in by_image.items():
        img = images[image_id]
        instances = tuple(_coco_instance(k, a, categories[a["category_id"]], f"{ann_path}: annotation {a['id']}")
                          for k, a in enumerate(image_anns))
        out.append(InstanceImage(_safe_id(str(image_id)), image_dir / img["file_name"], int(img["width"]),
                                 int(img["height"]), instances, "coco"))
    _check_unique(out, ann_path)
    return out


def _shoelace(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _yolo_instance(index: int, target: PolygonTarget) -> Instance:
    pts = target.pixel_polygon()
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return Instance(index, target.category, (float(x0), float(y0), float(x1), float(y1)), _shoelace(pts),
                    segmentation=pts, ann_id=target.line)


def _yoloseg_images(root: Path, split: str) -> list[InstanceImage]:
    targets = load_yolo_seg(root, split)  # warns about label files without an image
    groups: dict[Path, list[PolygonTarget]] = {}
    for t in targets:  # already in stem order, then line order
        groups.setdefault(t.image_path, []).append(t)
    if not groups:
        raise DatasetError(f"{root / 'labels' / split}: no polygon instances")
    out = [InstanceImage(_safe_id(path.stem), path, group[0].width, group[0].height,
                         tuple(_yolo_instance(k, t) for k, t in enumerate(group)), "yoloseg")
           for path, group in groups.items()]
    _check_unique(out, root / "labels" / split)
    return out


def _safe_id(value: str) -> str:
    """Image ids go into sample ids and file names: anything but letters, digits, '.', '_', '-' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)


def _check_unique(images: list[InstanceImage], where: Path) -> None:
    seen: dict[str, Path] = {}
    for image in images:
        if image.image_id in seen:
            raise DatasetError(f"{where}: {seen[image.image_id].name} and {image.image_path.name} both get the image "
                               f"id {image.image_id!r}; rename one")
        seen[image.image_id] = image.image_path
