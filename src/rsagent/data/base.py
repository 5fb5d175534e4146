"""What every dataset loader yields: samples whose image and ground truth load on demand.

Loaders list samples cheaply (no image decoding) so that a 10k-sample split is listed in seconds
and workers load only what they evaluate. Every loader raises `DatasetError` (one line, naming the
root and what was found there) for a wrong root or a missing split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth

__all__ = ["DatasetError", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One query on one image. `load_gt(height, width)` builds the ground truth (target + ignore)."""

    sample_id: str
    image_path: Path
    query: str
    load_gt: Callable[[int, int], GroundTruth] = field(repr=False, compare=False)
    meta: dict = field(default_factory=dict, compare=False)  # loader-specific extras (ids, all queries)

    def load(self) -> tuple[np.ndarray, GroundTruth]:
        """The RGB image and its ground truth at the image's size."""
        image = load_image(self.image_path)
        return image, self.load_gt(image.shape[0], image.shape[1])
