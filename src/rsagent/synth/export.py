"""Training data from synthesized trajectories, in standard forms anyone can train on.

Every file lives under one folder DIR; image paths in the records are relative to DIR.

- `images/<hash>.png`: each picture the policy saw, rendered exactly as at inference
  (`env.render.render_view` at the view's displayed size, i.e. the policy's coordinate frame), stored
  once by content hash, lossless, so a loader gets the very pixels the policy was shown.
- `sft.jsonl` (TRL 1.16 `SFTTrainer`): `{"messages": [...], "images": ["images/<hash>.png", ...],
  "sample_id": ...}`. TRL's `prepare_multimodal_messages` skips image placeholders in `role: "tool"`
  messages, so each tool observation is written as the user message the project's chat template makes
  of it anyway: `<tool_response>\\n`, its images, its text, `\\n</tool_response>` (the layout the
  `openai` policy sends, `policies.openai_compat.openai_messages`). Rendered through
  `policies/chat_template.jinja` the text is character for character the conversation the `qwen`
  policy fed and generated, so every image is a plain `{"type": "image"}` placeholder that TRL fills
  from `images` in order. Every `content` is a list of `{"type", "text"}` parts (never a bare string),
  so Arrow gives the column one schema and no part gains an `image` key (the null-key pitfall of
  notes/training-frameworks.md). The conversation stops at the last assistant answer: what followed
  it (the final "Submitted ..." observation) was never shown to the policy and carries no loss.
  The only wrapper the SFT collator needs opens the paths, relative to DIR::

      def collate(examples):  # around trl's DataCollatorForVisionLanguageModeling(processor, ...)
          return trl_collator([{**ex, "images": [Image.open(DIR / p).convert("RGB") for p in ex["images"]]}
                               for ex in examples])

  With `assistant_only_loss=True` and the project's template (its `{% generation %}` marks) the loss
  covers exactly each answer and its `<|im_end|>`.
- `sharegpt.jsonl` + `dataset_info.json` (LLaMA-Factory): `conversations` of `human` / `gpt` /
  `observation` turns with `<image>` placeholders, `system` (which already holds the tools block),
  `images`. LLaMA-Factory's `qwen2_vl` template writes an observation as the same
  `<tool_response>` user turn, so the text is the same (it also trains the newline after `<|im_end|>`).
- `rl_prompts.jsonl`: one (image, query) a line with its ground truth as COCO RLE, for an RL stage that
  rolls out its own episodes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rsagent.core.files import atomic_write_bytes, atomic_write_text
from rsagent.core.mask import GroundTruth, decode_rle, encode_rle
from rsagent.core.trajectory import ImageRef, Trajectory
from rsagent.env.render import render_view
from rsagent.eval.results import dumps_line
from rsagent.policies.openai_compat import openai_messages

IMAGE_DIR = "images"
IMAGE_TOKEN = "<image>"  # LLaMA-Factory's placeholder
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "tool": "observation"}
EXPORT_FILES = ("sft.jsonl", "sharegpt.jsonl", "dataset_info.json", "rl_prompts.jsonl")


# --- pictures -----------------------------------------------------------------------------------
def _image_refs(messages: list[dict]) -> list[ImageRef]:
    return [p["ref"] for m in messages for p in m["content"] if p["type"] == "image"]


def _render(traj: Trajectory, image: np.ndarray, refs: list[ImageRef]) -> list[np.ndarray]:
    """Each reference as `Episode.render` draws it: the same function, view pixels and masks."""
    views = {v.id: v for v in traj.views}
    rles = {c.id: c.rle for c in traj.candidates}
    masks: dict[int, np.ndarray] = {}  # decoded once, and only those shown
    pixels: dict[int, np.ndarray] = {}
    out = []
    for ref in refs:
        view = views[ref.view_id]
        if view.id not in pixels:
            pixels[view.id] = view.render(image)
        for m in ref.mask_ids:
            if m not in masks:
                masks[m] = decode_rle(rles[m])
        out.append(render_view(image, view, [(m, masks[m]) for m in ref.mask_ids], pixels=pixels[view.id]))
    return out


def trajectory_images(traj: Trajectory, image: np.ndarray) -> list[np.ndarray]:
    """Every image of `traj.messages()` in conversation order, as the policy was shown it."""
    return _render(traj, image, _image_refs(traj.messages()))


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG with no metadata: the same pixels always give the same bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class ImageStore:
    """PNGs under DIR/images/, named by a hash of their pixels: one file per distinct picture, written
    once (atomically, so workers writing the same picture at once are harmless)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        self.names: set[str] = set()  # relative paths this store has handed out

    def add(self, pixels: np.ndarray) -> str:
        """Store `pixels` (H, W, 3) uint8; returns the path relative to DIR."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        digest = hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:32]
        name = f"{IMAGE_DIR}/{digest}.png"
        if name not in self.names:
            path = self.root / name
            if not path.exists():
                atomic_write_bytes(path, png_bytes(pixels))
            self.names.add(name)
        return name


# --- the conversation ---------------------------------------------------------------------------
def training_messages(traj: Trajectory) -> list[dict]:
    """`traj.messages()` through the last assistant answer: what the policy read and wrote."""
    messages = traj.messages()
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError(f"trajectory {traj.sample_id!r} has no assistant turn to train on")
    return messages[:last + 1]


def _stored_images(traj: Trajectory, image: np.ndarray, messages: list[dict], store: ImageStore) -> list[str]:
    return [store.add(p) for p in _render(traj, image, _image_refs(messages))]


def _parts(content: str | list[dict]) -> list[dict]:
    """Structured parts only: text parts, and bare image placeholders for TRL to fill."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "image"} if p["type"] == "image_url" else {"type": "text", "text": p["text"]} for p in content]


def sft_record(traj: Trajectory, image: np.ndarray, store: ImageStore, images: list[str] | None = None,
               mistake_turns: Sequence[int] = ()) -> dict:
    """TRL's conversational vision row: `messages` (tool observations as `<tool_response>` user turns)
    and `images` (paths relative to the store's folder, in placeholder order; given when already stored).
    The assistant messages of `mistake_turns` (1-based turns written wrong on purpose) carry `"loss": false`:
    the chat template renders them outside its generation marks, so they are context and not targets."""
    messages = training_messages(traj)
    images = _stored_images(traj, image, messages, store) if images is None else images
    # the openai policy's layout (tool turns as <tool_response> user turns); its image URLs become placeholders
    chat = [{"role": m["role"], "content": _parts(m["content"])} for m in openai_messages(messages, lambda _: "")]
    turn = 0
    for message in chat:
        if message["role"] == "assistant":
            turn += 1
            if turn in mistake_turns:
                message["loss"] = False
    return {"messages": chat, "images": images, "sample_id": traj.sample_id}


def sharegpt_record(traj: Trajectory, image: np.ndarray, store: ImageStore,
                    images: list[str] | None = None) -> dict:
    """LLaMA-Factory's ShareGPT row: human, then gpt / observation alternating, `<image>` placeholders
    (`images`: the stored paths, when already stored)."""
    messages = training_messages(traj)
    images = _stored_images(traj, image, messages, store) if images is None else images
    turns = []
    for msg in messages[1:]:  # the system prompt has its own column
        texts = [p["text"] for p in msg["content"] if p["type"] == "text"]
        if any(IMAGE_TOKEN in t for t in texts):
            raise ValueError(f"{traj.sample_id}: text holds the literal {IMAGE_TOKEN}, which LLaMA-Factory reads "
                             f"as an image placeholder")
        turns.append({"from": SHAREGPT_ROLES[msg["role"]],
                      "value": "".join(IMAGE_TOKEN if p["type"] == "image" else p["text"] for p in msg["content"])})
    for i, turn in enumerate(turns):  # LLaMA-Factory requires this alternation
        expected = "human" if i == 0 else "gpt" if i % 2 else "observation"
        if turn["from"] != expected:
            raise ValueError(f"{traj.sample_id}: turn {i} is {turn['from']}, expected {expected}")
    return {"conversations": turns, "system": messages[0]["content"][0]["text"], "images": images,
            "sample_id": traj.sample_id}


def dataset_info(name: str, file_name: str) -> dict:
    """LLaMA-Factory's dataset_info.json content registering `file_name` (ShareGPT) as `name`."""
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "system": "system", "images": "images"},
                   "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                            "assistant_tag": "gpt", "observation_tag": "observation"}}}


# --- RL prompts ---------------------------------------------------------------------------------
def rl_prompt_record(record: dict, traj: Trajectory, gt: GroundTruth, image_path: str) -> dict:
    """One (image, query) for RL: the source image, its size and the ground truth as COCO RLE
    (`ignore`: don't-care pixels, or null)."""
    h, w = int(traj.image["height"]), int(traj.image["width"])
    if gt.shape != (h, w):
        raise ValueError(f"{record['sample_id']}: ground truth {gt.shape} does not match the image {(h, w)}")
    ignore = gt.ignore if gt.ignore is not None and gt.ignore.any() else None
    return {"sample_id": record["sample_id"], "source": record.get("source"), "source_id": record.get("source_id"),
            "kind": record.get("kind"), "query": record.get("query", traj.query), "image": image_path,
            "width": w, "height": h, "mask": encode_rle(gt.mask),
            "ignore": encode_rle(ignore) if ignore is not None else None}


# --- all files ----------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, b"".join(dumps_line(r) for r in rows))


def export_rows(record: dict, traj: Trajectory, image: np.ndarray, gt: GroundTruth, store: ImageStore,
                mistake_loss: bool = False) -> dict:
    """One item's export rows (its pictures written to `store`): `rl` unless it failed, `sft` and
    `sharegpt` when accepted. Synthesis workers call this; `write_exports` gathers the rows.
    The record's `mistake_turns` are marked without loss in the SFT row unless `mistake_loss`."""
    if record.get("reject") == "failed" or traj.final.get("reason") == "failed":
        return {}
    rows = {"rl": rl_prompt_record(record, traj, gt, record.get("image") or traj.image["path"])}
    if record.get("status") == "accepted":
        images = _stored_images(traj, image, training_messages(traj), store)  # rendered once for both rows
        mistakes = () if mistake_loss else record.get("mistake_turns", ())
        rows["sft"] = sft_record(traj, image, store, images, mistakes)
        rows["sharegpt"] = sharegpt_record(traj, image, store, images)
    return rows


def write_exports(out: Path, items: Iterable[tuple[dict, dict]], name: str = "rsagent_synth") -> dict:
    """Write sft.jsonl, sharegpt.jsonl, dataset_info.json and rl_prompts.jsonl under `out` from
    (record, export_rows(...)) pairs in item order.

    Records accepted now go to SFT and ShareGPT (a record may have been accepted when its rows were
    made and rejected since, e.g. as a duplicate); each (image, query) that did not fail goes once to
    the RL prompts (the first of its items: one query may have been run with several openings).
    The same items in the same order give the same bytes. Returns the counts written.
    """
    out = Path(out)
    sft, sharegpt, rl = [], [], []
    prompts: set[tuple[str, str]] = set()
    for record, rows in items:
        if "rl" in rows:
            key = (rows["rl"]["image"], rows["rl"]["query"])
            if key not in prompts:
                prompts.add(key)
                rl.append(rows["rl"])
        if record.get("status") == "accepted":
            sft.append(rows["sft"])
            sharegpt.append(rows["sharegpt"])
    _write_jsonl(out / "sft.jsonl", sft)
    _write_jsonl(out / "sharegpt.jsonl", sharegpt)
    atomic_write_text(out / "dataset_info.json",
                      json.dumps(dataset_info(name, "sharegpt.jsonl"), indent=1, ensure_ascii=False) + "\n")
    _write_jsonl(out / "rl_prompts.jsonl", rl)
    return {"sft": len(sft), "sharegpt": len(sharegpt), "rl_prompts": len(rl)}
