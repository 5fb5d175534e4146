"""What every dataset loader yields: samples whose image and ground truth load on demand.

Loaders list samples cheaply (no image decoding) so that a 10k-sample split is listed in seconds
and workers load only what they evaluate. Every loader raises `DatasetError` (one line, naming the
root and what was found there) for a wrong root or a missing split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth

__all__ = ["DatasetError", "Sample", "read_jsonl"]


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


def read_jsonl(path: Path, what: str) -> Iterator[tuple[int, str, dict]]:
    """(line number, where, object) for each non-blank line of a JSONL file; `where` ("path: line N")
    starts messages.
    An unreadable file or a line that is not a JSON object is a `DatasetError` naming the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield number, where, record
