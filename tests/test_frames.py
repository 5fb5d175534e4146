"""Coordinate frames: what the policy writes, mapped to the view it was shown and back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsagent.core.frames import (
    NormalizedFrame,
    PixelFrame,
    SmartResizeFrame,
    make_frame,
    smart_resize,
)
from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth, polygons_to_mask
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.policies.base import format_answer
from rsagent.policies.oracle import OraclePolicy
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter

SIZES = st.tuples(st.integers(1, 4000), st.integers(1, 4000)).filter(lambda s: max(s) / min(s) <= 200)


@settings(max_examples=300, deadline=None)
@given(SIZES, st.sampled_from([56 * 56, 4 * 28 * 28]), st.sampled_from([200_000, 1280 * 28 * 28, 12845056]))
def test_smart_resize_matches_transformers(size, min_pixels, max_pixels):
    qwen = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    h, w = size
    assert smart_resize(h, w, 28, min_pixels, max_pixels) == qwen.smart_resize(h, w, 28, min_pixels, max_pixels)


@given(st.integers(1, 1000), st.integers(1, 1000), st.data())
def test_norm1000_points_round_trip_exactly_up_to_1000_pixels(w, h, data):
    frame = NormalizedFrame()
    pts = np.array([[data.draw(st.integers(0, w - 1)), data.draw(st.integers(0, h - 1))] for _ in range(4)])
    model = frame.points_from_view(pts, (w, h))
    assert np.all((model >= 0) & (model <= 1000))
    assert np.array_equal(frame.points_to_view(model, (w, h)), pts)


@given(st.integers(1001, 5000), st.integers(1, 5000), st.data())
def test_norm1000_points_on_large_views_land_within_one_step(w, h, data):
    frame = NormalizedFrame()
    pts = np.array([[data.draw(st.integers(0, w - 1)), data.draw(st.integers(0, h - 1))] for _ in range(4)])
    back = frame.points_to_view(frame.points_from_view(pts, (w, h)), (w, h))
    assert np.all(np.abs(back - pts) <= np.ceil(np.array([w, h]) / 1000))
    # model -> view -> model is exact: every model value names a pixel that maps back to it
    model = np.array([[data.draw(st.integers(0, 1000)), data.draw(st.integers(0, 1000))] for _ in range(4)])
    view = frame.points_to_view(model, (w, h))
    assert np.array_equal(frame.points_to_view(frame.points_from_view(view, (w, h)), (w, h)), view)


@given(st.integers(1, 3000), st.integers(1, 3000), st.data())
def test_norm1000_boxes_round_trip_within_half_a_step(w, h, data):
    frame = NormalizedFrame()
    x0, x1 = sorted(data.draw(st.lists(st.integers(0, w), min_size=2, max_size=2, unique=True))) if w > 0 else (0, 1)
    y0, y1 = sorted(data.draw(st.lists(st.integers(0, h), min_size=2, max_size=2, unique=True)))
    back = frame.box_to_view(frame.box_from_view((x0, y0, x1, y1), (w, h)), (w, h))
    step = np.array([w, h, w, h]) / 1000
    assert np.all(np.abs(np.array(back) - [x0, y0, x1, y1]) <= step / 2 + 1e-9)
    box = [data.draw(st.integers(0, 999)), data.draw(st.integers(0, 999))]
    box = [box[0], box[1], data.draw(st.integers(box[0] + 1, 1000)), data.draw(st.integers(box[1] + 1, 1000))]
    assert frame.box_from_view(frame.box_to_view(box, (w, h)), (w, h)) == box


def test_pixel_frames_are_the_identity_on_coordinates():
    for frame in (PixelFrame(), SmartResizeFrame()):
        pts = np.array([[0, 0], [27, 13]])
        assert np.array_equal(frame.points_to_view(frame.points_from_view(pts, (28, 28)), (28, 28)), pts)
        assert frame.box_from_view(frame.box_to_view([1, 2, 3, 4], (28, 28)), (28, 28)) == [1, 2, 3, 4]
    assert SmartResizeFrame().display_size(640, 480) == (644, 476)
    assert SmartResizeFrame(max_pixels=200_000).display_size(640, 480) == (504, 364)
    assert make_frame("qwen2.5-vl", max_pixels=200_000) == SmartResizeFrame(max_pixels=200_000)
    with pytest.raises(ValueError, match="unknown coordinate frame"):
        make_frame("fractions")


@pytest.fixture(scope="module")
def broccoli(coco128_target):
    t = coco128_target("000000000009-2")
    image = load_image(t.image_path)
    mask = polygons_to_mask([t.polygon * [t.width, t.height]], t.height, t.width)
    return image, GroundTruth(mask)


def test_norm1000_episode_maps_calls_and_describes_in_the_frame(broccoli):
    image, gt = broccoli  # 640x480
    ep = Episode(EpisodeTask(image, "the broccoli", gt=gt), make_segmenter("grabcut"), EpisodeConfig(max_turns=4),
                 frame=NormalizedFrame())
    assert "0 to 1000" in ep.system_prompt and "coordinates are 0-1000" in ep.user_text
    obs = ep.step(format_answer("box it", "segment", {"box": [0, 500, 500, 1000]}))
    cand = ep.candidates[0]
    assert cand.prompt["box"] == [0.0, 240.0, 320.0, 480.0]  # image pixels
    described = obs.text.split("box ")[1].split(" in view")[0]
    bx0, by0, bx1, by1 = cand.box  # image pixels
    expected = [round(bx0 / 640 * 1000), round(by0 / 480 * 1000), round(bx1 / 640 * 1000), round(by1 / 480 * 1000)]
    assert list(map(int, described.strip("[]").split(", "))) == expected  # the candidate's box, in the frame
    assert expected[1] >= 480 and expected[2] <= 520
    err = ep.step(format_answer("too far", "refine", {"mask_id": 1, "points": [[1001, 5]]}))
    assert "a point is outside view 0" in err.text and "x in 0..1000" in err.text
    ok = ep.step(format_answer("click", "refine", {"mask_id": 1, "points": [[1000, 1000]], "labels": [0]}))
    assert ok.text.startswith("Candidate 2") and ep.candidates[1].prompt["points"][-1] == [639, 479]


def test_oracle_scores_alike_in_every_frame(coco128_targets):
    """The oracle writes through the episode's frame, so a smaller or normalised frame loses little."""
    picked = [t for t in coco128_targets if t.class_id in (0, 2, 16, 23)][:6]
    tasks = []
    for t in picked:
        image = load_image(t.image_path)
        tasks.append(EpisodeTask(image, "x", t.sample_id, GroundTruth(
            polygons_to_mask([t.polygon * [t.width, t.height]], t.height, t.width))))
    scores = {}
    for frame in (PixelFrame(), SmartResizeFrame(max_pixels=200_000), NormalizedFrame()):
        policy = OraclePolicy()
        policy.frame = frame
        trajs = run_episodes(policy, make_segmenter("grabcut"), tasks, EpisodeConfig(max_turns=6), progress=False)
        assert all(tr.config["frame"]["name"] == frame.name for tr in trajs)
        assert all(turn.error is None for tr in trajs for turn in tr.turns)
        scores[frame.name] = float(np.mean([tr.metrics["iou"] for tr in trajs]))
    assert scores["pixels"] > 0.6
    assert abs(scores["qwen2.5-vl"] - scores["pixels"]) < 0.08 and abs(scores["norm1000"] - scores["pixels"]) < 0.08
