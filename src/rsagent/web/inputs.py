"""What the Segment tab runs on: an uploaded image (with an optional uploaded ground-truth mask), or
a shapes scene drawn from a seed, which brings its own query and ground truth."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.web.limits import UploadLimits, read_image, read_mask

MAX_SEED = 10**9
SHAPES_SPLIT = "test"


@dataclass(frozen=True)
class SegmentInput:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    name: str  # the sample id the trajectory records
    source: str  # what the page says it is
    gt: np.ndarray | None = None  # bool (H, W): read by the oracle, and gives the IoU
    query: str | None = None  # a shapes scene's own query

    def with_gt(self, path: str | Path, limits: UploadLimits) -> SegmentInput:
        h, w = self.image.shape[:2]
        return replace(self, gt=read_mask(path, (w, h), limits))


def from_upload(path: str | Path, limits: UploadLimits) -> SegmentInput:
    path = Path(path)
    image = read_image(path, limits)
    return SegmentInput(image, path.stem or "upload", f"upload {path.name}")


def from_shapes(seed: float | int | None) -> SegmentInput:
    """Sample `seed` of the shapes test split: its scene, query and exact ground truth."""
    from rsagent.data.shapes import generate

    if seed is None or float(seed) != int(seed) or not 0 <= int(seed) <= MAX_SEED:
        raise RsagentError(f"the seed must be a whole number from 0 to {MAX_SEED:,}")
    sample = generate(SHAPES_SPLIT, int(seed))
    return SegmentInput(sample.scene.image, sample.sample_id, f"shapes scene {sample.sample_id}", sample.mask,
                        sample.query)
