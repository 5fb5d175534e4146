"""A plain JSONL manifest: any images, queries and masks as evaluation samples.

`root` is the manifest file itself, or a folder holding `manifest.jsonl`. One JSON object per line
(blank lines are skipped):

    {"sample_id": "cat-1", "image": "images/cat.jpg", "query": "the cat on the left",
     "mask": "masks/cat-1.png"}                                 # non-zero = target
    {"sample_id": "cat-2", "image": "images/cat.jpg", "query": "the sofa",
     "polygons": [[10, 20, 200, 20, 180, 310]], "ignore": "masks/cat-2-ignore.png", "split": "val"}
    {"sample_id": "cat-3", "image": "/data/cat.png", "query": "the lamp",
     "mask": {"size": [480, 640], "counts": "..."}, "ignore": null}   # COCO RLE

- `sample_id` (string, unique), `image` and `query` (non-empty string) are required.
- The target is exactly one of `mask` or `polygons` (a list of flat `[x1, y1, x2, y2, ...]` lists in
  image pixels, at least 3 points each, filled and unioned; `[]` = an empty target, "nothing to
  find"). A `mask` is a PNG path (non-zero = target) or a COCO RLE `{"size": [height, width],
  "counts": ...}` (`counts` a compressed string, as `pycocotools` and `rsagent.core.mask.encode_rle`
  write it, or an uncompressed list of run lengths), 1 = target; either must have the image's size.
- `ignore` (optional, `null` = none): a PNG path or a COCO RLE of the image's size whose non-zero
  pixels are don't-care (removed from both prediction and ground truth by the lisa protocol).
- `split` (optional): with a split asked for, only lines with that split are listed; without one,
  every line is.
- Relative paths are resolved against the manifest's folder. Other keys are kept in `Sample.meta`.

So synthesis's `rl_prompts.jsonl` (`rsagent.synth.export.rl_prompt_record`: absolute image paths, RLE
`mask` and `ignore`, and `source`, `kind`, `width`, `height`... kept in meta) is a manifest.

Listing reads no image. A malformed line (bad JSON, a missing or mistyped field, an RLE without a
`[height, width]` size or with counts that are not a string or a list of non-negative integers
summing to height x width, a duplicate sample id) raises DatasetError naming the file and line
number. Building the ground truth (`Sample.load`) raises DatasetError when an RLE's size is not the
image's or its compressed counts do not decode to height x width pixels (naming the sample and the
line), and MaskError when a PNG's size is not the image's.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.image import load_mask
from rsagent.core.mask import GroundTruth, decode_rle, polygons_to_mask
from rsagent.data.base import Sample, read_jsonl

MANIFEST_NAME = "manifest.jsonl"
_KNOWN = {"sample_id", "image", "query", "mask", "polygons", "ignore", "split"}
_COUNTS = re.compile(r"[0-o]*")  # the characters of a compressed COCO RLE: chr(48) .. chr(111)


Rle = dict  # a checked COCO RLE: {"size": [h, w], "counts": str | list[int]}


def _rle_total(counts: str) -> int | None:
    """The number of pixels a compressed COCO RLE string covers (the sum of its runs, decoded as
    pycocotools' rleFrString does), or None when the string is malformed or a run is negative."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None  # a run cut short
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return sum(runs)


def _load_rle(rle: Rle, key: str, height: int, width: int, who: str) -> np.ndarray:
    h, w = rle["size"]
    if (h, w) != (height, width):
        raise DatasetError(f"{who}: the \"{key}\" RLE has size [height, width] = [{h}, {w}] but the image is "
                           f"[{height}, {width}]")
    if isinstance(rle["counts"], str) and _rle_total(rle["counts"]) != h * w:
        raise DatasetError(f"{who}: the \"{key}\" RLE's counts string does not decode to {h} x {w} pixels")
    return decode_rle(rle)


def _gt(who: str, mask: Path | Rle | None, polygons: list[np.ndarray] | None, ignore_src: Path | Rle | None,
        height: int, width: int) -> GroundTruth:
    if isinstance(mask, dict):
        target = _load_rle(mask, "mask", height, width, who)
    elif mask is not None:
        target = load_mask(mask, size=(width, height))
    else:
        target = polygons_to_mask(polygons or [], height, width)
    ignore = None
    if ignore_src is not None:
        if isinstance(ignore_src, dict):
            ignore = _load_rle(ignore_src, "ignore", height, width, who)
        else:
            ignore = load_mask(ignore_src, size=(width, height))
        if not ignore.any():
            ignore = None
    return GroundTruth(target, ignore)


def _rle(value: dict, key: str, where: str) -> Rle:
    """Check the shape of a COCO RLE dict (listing time); the counts string is decoded at load."""
    def _int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    size, counts = value.get("size"), value.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_int(v) for v in size)):
        raise DatasetError(f"{where}: the \"{key}\" RLE needs \"size\": [height, width] (two non-negative "
                           f"integers), got {size!r}")
    if isinstance(counts, str):
        if not _COUNTS.fullmatch(counts):
            raise DatasetError(f"{where}: the \"{key}\" RLE's \"counts\" string is not a COCO compressed RLE")
    elif isinstance(counts, list):
        if not all(_int(v) for v in counts):
            raise DatasetError(f"{where}: the \"{key}\" RLE's \"counts\" list must hold non-negative integers")
        if sum(counts) != size[0] * size[1]:
            raise DatasetError(f"{where}: the \"{key}\" RLE's counts sum to {sum(counts)}, not height x width "
                               f"= {size[0] * size[1]}")
    else:
        raise DatasetError(f"{where}: the \"{key}\" RLE needs \"counts\": a string or a list of integers, "
                           f"got {type(counts).__name__ if counts is not None else 'none'}")
    return {"size": [int(size[0]), int(size[1])], "counts": counts}


def _mask_source(base: Path, value, key: str, where: str) -> Path | Rle:
    """A PNG path or a COCO RLE dict."""
    if isinstance(value, dict):
        return _rle(value, key, where)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: \"{key}\" must be a PNG path or a COCO RLE {{\"size\": [height, width], "
                           "\"counts\": ...}")
    return _path(base, value, key, where)


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
            raise DatasetError(f"{where}: give exactly one of \"mask\" (PNG path or COCO RLE) or \"polygons\" "
                               "(use \"polygons\": [] for an empty target)")
        mask = _mask_source(base, entry["mask"], "mask", where) if has_mask else None
        polygons = _polygons(entry["polygons"], where) if has_polygons else None
        ignore = _mask_source(base, entry["ignore"], "ignore", where) if entry.get("ignore") is not None else None
        image = _path(base, entry["image"], "image", where)
        if split is not None and line_split != split:
            continue
        meta = {"manifest": str(manifest), "line": number, "split": line_split,
                **{k: v for k, v in entry.items() if k not in _KNOWN}}
        load_gt = partial(_gt, f"sample {sample_id!r} ({where})", mask, polygons, ignore)
        samples.append(Sample(sample_id, image, query, load_gt, meta))
    if split is not None and not samples:
        raise DatasetError(f"{manifest}: no line has \"split\": {split!r} (splits found: "
                           f"{', '.join(sorted(splits)) or 'none'})")
    return samples
