"""The SFT export (`synth/export.py`: sft.jsonl + images/ + run.json) as a checked dataset and a collator.

Nothing is dropped silently: a row that cannot be trained on exactly as the policy saw it (a missing
picture, a picture the processor would resize, placeholders that do not match the pictures) stops
the run with the row and the reason. The collator is TRL's `DataCollatorForVisionLanguageModeling`
(assistant-only loss through the template's generation marks, no truncation) behind a thin wrapper
that opens the pictures and removes the `None` keys Arrow adds to message parts (a part with
`"image": None` or `"text": None` would make TRL miscount images; notes/training-frameworks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.core.frames import QWEN_FACTOR, smart_resize

SFT_FILE = "sft.jsonl"
RUN_FILE = "run.json"


def load_rows(data_dir: str | Path) -> list[dict]:
    """The rows of DIR/sft.jsonl, each checked: messages, images (existing files under DIR), and one
    image placeholder per image."""
    root = Path(data_dir)
    if not root.is_dir():
        raise RsagentError(f"--data {data_dir}: no such folder (expected a `rsagent synth` output folder)")
    path = root / SFT_FILE
    if not path.is_file():
        raise RsagentError(f"--data {data_dir}: no {SFT_FILE} (expected a `rsagent synth` output folder)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RsagentError(f"{path}:{number}: not JSON ({exc})") from None
        rows.append(_checked(row, root, f"{path}:{number}"))
    if not rows:
        raise RsagentError(f"{path} is empty: synthesis accepted no trajectory; nothing to train on")
    return rows


def _checked(row: dict, root: Path, where: str) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not isinstance(row.get("images"), list):
        raise RsagentError(f"{where}: a row needs a `messages` list and an `images` list")
    placeholders = sum(1 for m in row["messages"] if isinstance(m.get("content"), list)
                       for p in m["content"] if isinstance(p, dict) and p.get("type") == "image")
    if placeholders != len(row["images"]):
        raise RsagentError(f"{where} ({row.get('sample_id')}): {placeholders} image placeholders but "
                           f"{len(row['images'])} images")
    if not any(m.get("role") == "assistant" for m in row["messages"]):
        raise RsagentError(f"{where} ({row.get('sample_id')}): no assistant turn to train on")
    for rel in row["images"]:
        if not (root / rel).is_file():
            raise RsagentError(f"{where} ({row.get('sample_id')}): image {rel} is missing under {root}")
    return {"messages": row["messages"], "images": row["images"], "sample_id": str(row.get("sample_id", where))}


def _synth_config(data_dir: str | Path) -> dict | None:
    """The synthesis settings the export was made with (run.json), or None for an export without one."""
    path = Path(data_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["config"]["synth"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RsagentError(f"{path}: cannot read the synthesis settings ({type(exc).__name__}: {exc})") from None


def export_frame(data_dir: str | Path) -> dict | None:
    """The coordinate frame the export was synthesized with, or None for an export without run.json."""
    synth = _synth_config(data_dir)
    if synth is None:
        return None
    if "frame" not in synth:
        raise RsagentError(f"{Path(data_dir) / RUN_FILE}: cannot read the synthesis frame (no 'frame')")
    return synth["frame"]


def export_max_turns(data_dir: str | Path) -> int | None:
    return (_synth_config(data_dir) or {}).get("max_turns")


def pixel_limits(frame: dict | None, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """(min_pixels, max_pixels) to train with: the export's frame, and any explicit value must equal it
    (the policy drew its coordinates on pictures of exactly that size)."""
    from rsagent.core.frames import QWEN_DEFAULT_MAX_PIXELS, QWEN_MIN_PIXELS

    if frame is None:  # an export without run.json: the per-picture check still guards the pixels
        return min_pixels or QWEN_MIN_PIXELS, max_pixels or QWEN_DEFAULT_MAX_PIXELS
    if frame.get("name") != "qwen2.5-vl" or int(frame.get("factor", QWEN_FACTOR)) != QWEN_FACTOR:
        raise RsagentError(f"frame mismatch: the export was synthesized for the {frame.get('name')!r} frame; the qwen "
                           "policy is trained on the qwen2.5-vl frame (synthesize with --frame qwen2.5-vl)")
    limits = (int(frame["min_pixels"]), int(frame["max_pixels"]))
    asked = (min_pixels or limits[0], max_pixels or limits[1])
    if asked != limits:
        raise RsagentError(f"frame mismatch: the export was synthesized with min_pixels={limits[0]} "
                           f"max_pixels={limits[1]}, but training asks for min_pixels={asked[0]} max_pixels={asked[1]}; "
                           "train with the export's limits (leave min_pixels/max_pixels unset) or synthesize again")
    return limits


def check_pixels(rows: list[dict], data_dir: str | Path, min_pixels: int, max_pixels: int) -> None:
    """Every picture must be a size the processor keeps as it is (a smart-resize fixed point): a
    resized picture is not what the policy saw, and its coordinates would no longer be its pixels."""
    from PIL import Image

    root = Path(data_dir)
    seen: set[str] = set()
    for row in rows:
        for rel in row["images"]:
            if rel in seen:
                continue
            seen.add(rel)
            try:
                with Image.open(root / rel) as im:
                    width, height = im.size
            except OSError as exc:
                raise RsagentError(f"{row['sample_id']}: image {rel} cannot be read ({exc})") from None
            try:
                target = smart_resize(height, width, QWEN_FACTOR, min_pixels, max_pixels)
            except ValueError as exc:
                raise RsagentError(f"{row['sample_id']}: image {rel}: {exc}") from None
            if target != (height, width):
                raise RsagentError(
                    f"frame mismatch: {row['sample_id']}: image {rel} is {width}x{height}, which the processor "
                    f"(min_pixels={min_pixels}, max_pixels={max_pixels}) would resize to {target[1]}x{target[0]}; "
                    "the model must see the pixels the policy saw: train with the export's pixel limits")


def sft_dataset(rows: list[dict]):
    """A `datasets.Dataset` of the rows; images stay paths (opened by the collator)."""
    from datasets import Dataset

    return Dataset.from_list(rows)


def _drop_none(value):
    """Arrow gives every struct in a column every key any of them has; the absent ones come back None."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


class SFTCollator:
    """TRL's vision collator over the export's rows: pictures opened from DIR as RGB, None keys dropped,
    assistant-only labels, no truncation (cutting into image tokens would break the row)."""

    def __init__(self, processor, data_dir: str | Path) -> None:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        self.root = Path(data_dir)
        self.inner = DataCollatorForVisionLanguageModeling(processor=processor, max_length=None,
                                                           assistant_only_loss=True)

    def open_images(self, paths: list[str]) -> list:
        from PIL import Image

        images = []
        for rel in paths:
            with Image.open(self.root / rel) as im:
                images.append(im.convert("RGB"))
        return images

    def __call__(self, examples: list[dict]) -> dict:
        batch = [{"messages": _drop_none(ex["messages"]), "images": self.open_images(ex["images"])} for ex in examples]
        return self.inner(batch)
