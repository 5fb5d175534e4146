"""A plain JSONL manifest: any images, queries and masks as evaluation samples.

`root` is the manifest file itself, or a folder holding `manifest.jsonl`. One JSON object per line
(blank lines are skipped):

    {"sample_id": "cat-1", "image": "images/cat.jpg", "query": "the cat on the left",
     "mask": "masks/cat-1.png"}                                 # non-zero = target
    {"sample_id": "cat-2", "image": "images/cat.jpg", "query": "the sofa",
     "polygons": [[10, 20, 200, 20, 180, 310]], "ignore": "masks/cat-2-ignore.png", "split": "val"}

- `sample_id` (string, unique), `image` and `query` (non-empty string) are required.
- The target is exactly one of `mask` (a PNG of the image's size; non-zero = target) or
  `polygons` (a list of flat `[x1, y1, x2, y2, ...]` lists in image pixels, at least 3 points
  each, filled and unioned; `[]` = an empty target, "nothing to find").
- `ignore` (optional): a PNG of the image's size whose non-zero pixels are don't-care (removed from
  both prediction and ground truth by the lisa protocol).
- `split` (optional): with a split asked for, only lines with that split are listed; without one,
  every line is.
- Relative paths are resolved against the manifest's folder. Other keys are kept in `Sample.meta`.

Listing reads no image. A malformed line (bad JSON, a missing or mistyped field, a duplicate
sample id) raises DatasetError naming the file and line number.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.image import load_mask
from rsagent.core.mask import GroundTruth, polygons_to_mask
from rsagent.data.base import Sample, read_jsonl

MANIFEST_NAME = "manifest.jsonl"
_KNOWN = {"sample_id", "image", "query", "mask", "polygons", "ignore", "split"}


def _gt(mask_path: Path | None, polygons: list[np.ndarray] | None, ignore_path: Path | None,
        height: int, width: int) -> GroundTruth:
    if mask_path is not None:
        target = load_mask(mask_path, size=(width, height))
    else:
        target = polygons_to_mask(polygons or [], height, width)
    ignore = None
    if ignore_path is not None:
        ignore = load_mask(ignore_path, size=(width, height))
        if not ignore.any():
            ignore = None
    return GroundTruth(target, ignore)


def _polygons(value, where: str) -> list[np.ndarray]:
    if not isinstance(value, list):
        raise DatasetError(f"{where}: \"polygons\" must be a list of [x1, y1, x2, y2, ...] lists")
    out = []
    for index, poly in enumerate(value):
        ok = (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in poly))
        if not ok:
            raise DatasetError(f"{where}: polygon {index} must be a flat list of at least 3 (x, y) pairs of "
                               "finite numbers")
        out.append(np.asarray(poly, np.float64).reshape(-1, 2))
    return out


def _path(base: Path, value, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: \"{key}\" must be a non-empty path string")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_manifest(root: str | Path, split: str | None = None) -> list[Sample]:
    """Samples of a manifest, in line order (only those of `split` when it is given)."""
    root = Path(root)
    manifest = root / MANIFEST_NAME if root.is_dir() else root
    if not manifest.is_file():
        what = f"a folder without {MANIFEST_NAME}" if root.is_dir() else "no such file"
        raise DatasetError(f"{root}: expected a manifest JSONL file or a folder holding {MANIFEST_NAME} ({what})")
    base = manifest.parent
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    splits: set[str] = set()
    for number, where, entry in read_jsonl(manifest, "manifest"):
        for key in ("sample_id", "image", "query"):
            if key not in entry:
                raise DatasetError(f"{where}: missing \"{key}\"")
        sample_id, query = entry["sample_id"], entry["query"]
        if not isinstance(sample_id, str) or not sample_id:
            raise DatasetError(f"{where}: \"sample_id\" must be a non-empty string")
        if not isinstance(query, str) or not query.strip():
            raise DatasetError(f"{where}: \"query\" must be a non-empty string")
        if sample_id in seen:
            raise DatasetError(f"{where}: sample_id {sample_id!r} already used on line {seen[sample_id]}")
        seen[sample_id] = number
        line_split = entry.get("split")
        if line_split is not None and not isinstance(line_split, str):
            raise DatasetError(f"{where}: \"split\" must be a string")
        if line_split is not None:
            splits.add(line_split)
        has_mask, has_polygons = "mask" in entry, "polygons" in entry
        if has_mask == has_polygons:
            raise DatasetError(f"{where}: give exactly one of \"mask\" (PNG path) or \"polygons\" "
                               "(use \"polygons\": [] for an empty target)")
        mask_path = _path(base, entry["mask"], "mask", where) if has_mask else None
        polygons = _polygons(entry["polygons"], where) if has_polygons else None
        ignore_path = _path(base, entry["ignore"], "ignore", where) if entry.get("ignore") is not None else None
        image = _path(base, entry["image"], "image", where)
        if split is not None and line_split != split:
            continue
        meta = {"manifest": str(manifest), "line": number, "split": line_split,
                **{k: v for k, v in entry.items() if k not in _KNOWN}}
        samples.append(Sample(sample_id, image, query, partial(_gt, mask_path, polygons, ignore_path), meta))
    if split is not None and not samples:
        raise DatasetError(f"{manifest}: no line has \"split\": {split!r} (splits found: "
                           f"{', '.join(sorted(splits)) or 'none'})")
    return samples
