"""The library call behind `rsagent demo`: the shipped shapes agent (rsagent.policies.demo_agent) on a
shapes scene that training never saw, or on any picture, through `segment_image` and its outputs."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsagent.api import SegmentResult, segment_image
from rsagent.core.errors import RsagentError
from rsagent.core.image import load_image, save_image, save_mask
from rsagent.data.shapes import ShapesSample, generate
from rsagent.data.shapes import queries as Q
from rsagent.policies.base import Policy
from rsagent.segmenters import make_segmenter

# SFT and RL draw their scenes from `train` and pick checkpoints on `val`: `test` scenes are unseen
DEMO_SPLIT = "test"
DEFAULT_OUT = "runs/demo-agent"
NOT_SHAPES = ("this agent was trained on the procedural shapes domain only (docs/shapes.md) and knows nothing "
              "else: on other pictures its answers mean little; no ground truth, so no IoU")


@dataclass
class DemoResult:
    result: SegmentResult
    query: str
    source: str  # "shapes test sample N" or the picture's path
    seconds: float  # everything, model loading included
    notes: list[str] = field(default_factory=list)


def shapes_scene_task(seed: int, query: str | None) -> tuple[ShapesSample, str, np.ndarray | None, list[str]]:
    """(sample, query, ground-truth mask or None, notes) for sample `seed` of the demo split. A given
    query is read by the shapes grammar and resolved on the scene graph; outside the grammar: no truth."""
    if seed < 0:
        raise RsagentError(f"--seed must be 0 or more, got {seed}")
    sample = generate(DEMO_SPLIT, seed)
    if query is None:
        return sample, sample.query, sample.mask, []
    try:
        program = Q.parse(query.strip())
    except ValueError:
        return sample, query, None, [f"{query!r} is outside the shapes query grammar (docs/shapes.md): running "
                                     "anyway, with no ground truth (IoU n/a)"]
    return sample, query, dataclasses.replace(sample, targets=Q.resolve(program, sample.scene)).mask, []


def run_demo(out: str | Path = DEFAULT_OUT, *, seed: int = 0, query: str | None = None,
             image: str | Path | None = None, max_turns: int = 8, policy: Policy | None = None,
             device: str | None = None, dtype: str | None = None) -> DemoResult:
    """Run the shipped agent with GrabCut and write `segment_image`'s outputs to `out` (plus image.png
    and gt.png for a shapes scene). `policy`: an already loaded one (default: the shipped agent)."""
    start = time.perf_counter()
    if max_turns < 1:
        raise RsagentError(f"--max-turns must be at least 1, got {max_turns}")
    if query is not None and not query.strip():
        raise RsagentError("--query is empty: say what to segment")
    out = Path(out)
    if image is None:
        sample, query, gt, notes = shapes_scene_task(seed, query)
    elif query is None:
        raise RsagentError("--image needs --query TEXT: what to segment in it")
    else:
        load_image(image)  # a missing or corrupt picture is refused before the model loads
    for stale in ("image.png", "gt.png"):  # left by an earlier demo in this folder: not this run's
        (out / stale).unlink(missing_ok=True)
    if image is None:
        source, sample_id = f"shapes {DEMO_SPLIT} sample {seed}", sample.sample_id
        image_path, gt_path = out / "image.png", None
        save_image(image_path, sample.scene.image)
        if gt is not None:
            gt_path = out / "gt.png"
            save_mask(gt_path, gt)
    else:
        image_path, gt_path, sample_id, source, notes = image, None, None, str(image), [NOT_SHAPES]
    if policy is None:
        from rsagent.policies.demo_agent import demo_policy

        policy = demo_policy(device=device, dtype=dtype)
    result = segment_image(image_path, query, policy, make_segmenter("grabcut"), gt_mask_path=gt_path,
                           max_turns=max_turns, out_dir=out, sample_id=sample_id)
    return DemoResult(result, query, source, time.perf_counter() - start, notes)
