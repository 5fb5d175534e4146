"""Tool schemas (one JSON schema each, used for the prompt and for validation) and argument checks.

Coordinates are integers in the pixel frame of a view: `view` 0 is the full image; `zoom_in` makes
new views. Omitted, `view` means the current view: the one shown in the latest image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jsonschema import Draft202012Validator

MAX_POINTS = 24

_BOX = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
        "description": "[x0, y0, x1, y1]: left, top, right, bottom in pixels of the view"}
_POINTS = {"type": "array", "minItems": 1, "maxItems": MAX_POINTS,
           "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
           "description": "clicks as [[x, y], ...] in pixels of the view"}
_LABELS = {"type": "array", "minItems": 1, "maxItems": MAX_POINTS, "items": {"enum": [0, 1]},
           "description": "one per point: 1 = part of the target, 0 = not part of it (default: all 1)"}
_VIEW = {"type": "integer", "minimum": 0, "description": "view id the coordinates refer to (default: the current view)"}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict

    def to_openai(self) -> dict:
        """The function-calling form used in the Hermes `<tools>` block and by OpenAI-style APIs."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _object(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TOOLS: dict[str, ToolSpec] = {t.name: t for t in [
    ToolSpec("segment", "Segment an object from a box and/or clicks. Returns a new candidate mask id, "
             "an overlay of the candidate on the view, its area and its box.",
             _object({"box": _BOX, "points": _POINTS, "labels": _LABELS, "view": _VIEW}, [])),
    ToolSpec("refine", "Improve an existing candidate with more clicks (positive adds, negative removes). "
             "Returns a new candidate id and its overlay.",
             _object({"mask_id": {"type": "integer", "minimum": 1}, "points": _POINTS, "labels": _LABELS,
                      "view": _VIEW}, ["mask_id", "points"])),
    ToolSpec("zoom_in", "Look closer: returns a new view of the box, enlarged. Later coordinates may refer to it.",
             _object({"box": _BOX, "view": _VIEW}, ["box"])),
    ToolSpec("submit", "End the episode: the answer is the union of the listed candidates; an empty list "
             "means the target is not in the image.",
             _object({"mask_ids": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                   "maxItems": 64, "uniqueItems": True}}, ["mask_ids"])),
]}

_VALIDATORS = {name: Draft202012Validator(spec.parameters) for name, spec in TOOLS.items()}


class ToolCallError(ValueError):
    """A call that cannot be executed; its message becomes the error observation."""


def _finite(value: object, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolCallError(f"{where} must be a finite number")
    if isinstance(value, bool):
        raise ToolCallError(f"{where} must be a number, not a boolean")
    if isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


def validate_call(name: str, arguments: dict, allowed: tuple[str, ...] | None = None) -> dict:
    """Check a call against its schema; returns normalised arguments (ints, default labels)."""
    if name not in TOOLS or (allowed is not None and name not in allowed):
        names = ", ".join(allowed or tuple(TOOLS))
        raise ToolCallError(f"unknown tool {name[:40]!r}; available tools: {names}")
    for key, value in arguments.items():
        _finite(value, key)
    errors = sorted(_VALIDATORS[name].iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "arguments"
        raise ToolCallError(f"invalid arguments for {name}: {where}: {err.message[:200]}")
    args = {k: _to_int(v) for k, v in arguments.items()}
    if name == "segment" and "box" not in args and "points" not in args:
        raise ToolCallError("segment needs a box, points, or both")
    if "points" in args:
        labels = args.setdefault("labels", [1] * len(args["points"]))
        if len(labels) != len(args["points"]):
            raise ToolCallError(f"{len(args['points'])} points but {len(labels)} labels; give one label per point")
    elif "labels" in args:
        raise ToolCallError("labels given without points")
    if "box" in args:
        x0, y0, x1, y1 = args["box"]
        if x1 <= x0 or y1 <= y0:
            raise ToolCallError(f"box {args['box']} is empty: need x0 < x1 and y0 < y1")
    return args


def _to_int(value):
    if isinstance(value, float):
        return int(value)
    if isinstance(value, list):
        return [_to_int(v) for v in value]
    return value
