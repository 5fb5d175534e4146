"""Evaluation datasets: each loader lists `Sample`s for a root and split (see docs/datasets.md)."""

from __future__ import annotations

from pathlib import Path

from rsagent.core.errors import DatasetError
from rsagent.data.base import Sample

DATASETS = ("reasonseg", "refcoco", "refcoco+", "refcocog", "coco", "manifest", "shapes", "yoloseg")


def load_dataset(name: str, root: str | Path, split: str | None = None, *, annotations: str | Path | None = None,
                 queries: str | Path | None = None) -> list[Sample]:
    """All samples of `split` (None: the dataset's default split) under `root`, in a fixed order.

    `annotations` / `queries` override where the COCO loader looks for the instances json and the
    queries JSONL; other loaders ignore them.
    """
    root = Path(root)
    if name == "reasonseg":
        from rsagent.data.reasonseg import load_reasonseg

        return load_reasonseg(root, split or "val")
    if name in ("refcoco", "refcoco+", "refcocog"):
        from rsagent.data.refer import load_refer

        return load_refer(root, name, split or "val")
    if name == "coco":
        from rsagent.data.coco import load_coco

        return load_coco(root, split or "val2017", annotations=annotations, queries=queries)
    if name == "manifest":
        from rsagent.data.manifest import load_manifest

        return load_manifest(root, split)
    if name == "shapes":  # procedural: generated into root/<split>/ on first use (docs/shapes.md)
        from rsagent.data.shapes import load_shapes

        return load_shapes(root, split)
    if name == "yoloseg":
        from rsagent.data.yoloseg import load_yoloseg

        return load_yoloseg(root, split)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DatasetError", "Sample", "load_dataset"]
