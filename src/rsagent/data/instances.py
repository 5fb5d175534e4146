"""Images with their full instance lists (category, box, area, segmentation): the sources from which
synthesis writes its own queries (COCO instances, YOLO-seg polygons).

A `Sample` carries one query and one target; an `InstanceImage` carries everything annotated in one
image, so that a generated query can be checked to single out exactly its target set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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

    image_id: str  # unique within the source; safe to use in sample ids
    image_path: Path
    width: int
    height: int
    instances: tuple[Instance, ...]
    source: str = ""  # dataset name, e.g. "coco" or "yoloseg"

    def mask(self, index: int) -> np.ndarray:
        """Bool (height, width) mask of one instance (parts merged), rasterised exactly as the same
        dataset's `load_dataset` loader draws that instance's ground truth."""
        raise NotImplementedError  # TODO(queries helper): dispatch on self.source

    def union(self, indices) -> np.ndarray:
        out = np.zeros((self.height, self.width), bool)
        for i in indices:
            out |= self.mask(i)
        return out
