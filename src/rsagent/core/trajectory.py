"""The trajectory document: everything one episode did, as JSON with a schema version.

It is what evaluation saves, what synthesis produces, what SFT trains on and what viewers show.
Images are not embedded: an image in a message is a reference (a view id and the candidate ids
drawn on it), re-rendered from the source image, the views and the candidates' RLE masks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsagent.core.view import View

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ImageRef:
    """An image shown to the policy: a view, optionally with candidates drawn on it."""

    view_id: int
    mask_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {"view_id": self.view_id, "mask_ids": list(self.mask_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageRef":
        return cls(int(d["view_id"]), tuple(int(m) for m in d.get("mask_ids", ())))


@dataclass
class Observation:
    """What the environment answers: text plus zero or more images."""

    text: str
    images: list[ImageRef] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"text": self.text, "images": [im.to_dict() for im in self.images]}

    @classmethod
    def from_dict(cls, d: dict) -> "Observation":
        return cls(d["text"], [ImageRef.from_dict(im) for im in d.get("images", [])])


@dataclass
class Candidate:
    """A mask the segmenter produced, in image pixels."""

    id: int
    rle: dict
    view_id: int  # the view the segmenter worked on
    turn: int
    tool: str  # "segment" or "refine"
    parent: int | None  # the refined candidate, if any
    prompt: dict  # box / points / labels in image pixels, accumulated over refinements
    score: float | None
    area: int
    box: list[float] | None  # tight box in image pixels


@dataclass
class Turn:
    """One assistant message and the environment's answer to it."""

    index: int  # 1-based
    assistant: str
    think: str | None
    tool_call: dict | None  # {"name", "arguments"} as parsed, or None when unparseable
    error: str | None  # why the call was rejected; None when it was executed
    format_ok: bool  # the answer followed the protocol strictly (for the format reward)
    observation: Observation
    candidate_id: int | None = None  # created by this turn
    view_id: int | None = None  # created by this turn (zoom_in)
    answer_iou: float | None = None  # IoU of the current answer after this turn, when GT is known
    seconds: dict[str, float] = field(default_factory=dict)  # policy / tool time
    # why `error`: "format" (no single parseable call), "arguments" (they do not fit the tool's schema),
    # "state" (a well-formed call the episode could not carry out: an unknown id or view, an empty box)
    error_kind: str | None = None


@dataclass
class Trajectory:
    sample_id: str
    query: str
    image: dict  # {"path", "width", "height"}
    system_prompt: str
    user_text: str
    config: dict
    views: list[View] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    final: dict = field(default_factory=dict)  # {"mask_ids", "rle", "reason", "error"}
    metrics: dict = field(default_factory=dict)  # {"iou", "intersection", "union"} when GT is known
    timings: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # --- chat view ---------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        """The conversation as chat messages; image parts are {"type": "image", "ref": ImageRef}."""
        return chat_messages(self.system_prompt, self.user_text, self.turns)

    # --- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["views"] = [v.to_dict() for v in self.views]
        d["turns"] = [{**asdict(t), "observation": t.observation.to_dict()} for t in self.turns]
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"trajectory schema version {version!r} is not supported (expected {SCHEMA_VERSION})")
        d = dict(d)
        d["views"] = [View.from_dict(v) for v in d.get("views", [])]
        d["candidates"] = [Candidate(**c) for c in d.get("candidates", [])]
        d["turns"] = [Turn(**{**t, "observation": Observation.from_dict(t["observation"])}) for t in d.get("turns", [])]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        return cls.from_dict(json.loads(Path(path).read_text()))


def chat_messages(system_prompt: str, user_text: str, turns: list[Turn]) -> list[dict]:
    """System, user (text, then image 0), then per turn the assistant's answer and the tool's observation.

    The query comes before the image so that, in a causal model, the image tokens can attend to it:
    on shapes a from-scratch model learned to ground the query only in this order (docs/shapes.md).
    Image parts are {"type": "image", "ref": ImageRef}; whoever shows them renders the reference.
    """
    msgs: list[dict] = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "text", "text": user_text}, {"type": "image", "ref": ImageRef(0)}]},
    ]
    for turn in turns:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn.assistant}]})
        if turn.observation.text or turn.observation.images:
            parts: list[dict[str, Any]] = [{"type": "image", "ref": r} for r in turn.observation.images]
            parts.append({"type": "text", "text": turn.observation.text})
            msgs.append({"role": "tool", "content": parts})
    return msgs
