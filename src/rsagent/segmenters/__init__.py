"""Segmenters behind one interface; `make_segmenter` builds one by name."""

from __future__ import annotations

from rsagent.segmenters.base import MaskPrompt, Prediction, Segmenter

SEGMENTERS = ("grabcut", "sam2")


def make_segmenter(name: str, **kwargs) -> Segmenter:
    """Build a segmenter by name: 'grabcut' (no weights) or 'sam2' (model=hub id or local dir)."""
    if name == "grabcut":
        from rsagent.segmenters.grabcut import GrabCutSegmenter

        return GrabCutSegmenter(**kwargs)
    if name == "sam2":
        from rsagent.segmenters.sam2 import Sam2Segmenter

        return Sam2Segmenter(**kwargs)
    raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")


__all__ = ["MaskPrompt", "Prediction", "Segmenter", "SEGMENTERS", "make_segmenter"]
