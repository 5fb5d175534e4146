"""The episode protocol end to end, with the real GrabCut segmenter on a real COCO128 image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth, decode_rle, iou, mask_box
from rsagent.core.trajectory import ImageRef, Trajectory
from rsagent.env.episode import PROTOCOL_HINT, Episode, EpisodeConfig, EpisodeTask
from rsagent.policies.base import format_answer
from rsagent.segmenters import make_segmenter

SAMPLE = "000000000009-2"  # the broccoli: 640x480, GT box (250, 229, 567, 475)
BOX = [250, 229, 567, 475]


def answer(name: str, **arguments) -> str:
    return format_answer(f"calling {name}", name, arguments)


@pytest.fixture(scope="module")
def target(coco128_target):
    return coco128_target(SAMPLE)


@pytest.fixture(scope="module")
def image(target):
    img = load_image(target.image_path)
    assert img.shape == (480, 640, 3)
    return img


@pytest.fixture(scope="module")
def gt(target):
    g = target.ground_truth()
    assert mask_box(g.mask) == tuple(float(v) for v in BOX)
    return g


@pytest.fixture(scope="module")
def segmenter():
    return make_segmenter("grabcut")


@pytest.fixture
def make_episode(image, gt, target, segmenter):
    def make(max_turns: int = 8, ground_truth: GroundTruth | None = gt, **config) -> Episode:
        task = EpisodeTask(image, target.query, target.sample_id, ground_truth, str(target.image_path))
        return Episode(task, segmenter, EpisodeConfig(max_turns=max_turns, **config))
    return make


# --- segment / refine ----------------------------------------------------------------------------
def test_segment_makes_candidate_1_with_an_overlay(make_episode, gt):
    ep = make_episode()
    obs = ep.step(answer("segment", box=BOX))
    turn = ep.turns[0]
    assert turn.error is None and turn.format_ok is True
    assert turn.candidate_id == 1 and turn.view_id is None
    assert obs.images == [ImageRef(0, (1,))]
    assert obs.text.startswith("Candidate 1 on view 0: area ") and obs.text.endswith("(7 turns left)")
    cand = ep.candidates[0]
    mask = ep.mask(1)
    assert (cand.id, cand.view_id, cand.turn, cand.tool, cand.parent) == (1, 0, 1, "segment", None)
    assert cand.prompt == {"box": [250.0, 229.0, 567.0, 475.0]}
    assert mask.shape == (480, 640) and mask.dtype == bool
    assert cand.area == int(mask.sum()) > 0
    assert np.array_equal(decode_rle(cand.rle), mask)
    assert tuple(cand.box) == mask_box(mask)
    # Everything outside the box is hard background for GrabCut (up to a superpixel at the edge).
    x0, y0, x1, y1 = cand.box
    assert x0 >= 250 - 16 and y0 >= 229 - 16 and x1 <= 567 + 16 and y1 <= 475 + 16
    pct = 100 * cand.area / (480 * 640)
    assert f"area {pct:.2f}% of the image" in obs.text
    assert f"box {[int(v) for v in cand.box]} in view 0" in obs.text
    assert turn.answer_iou == pytest.approx(iou(mask, gt)) and turn.answer_iou > 0.8


def test_refine_accumulates_the_prompt_and_records_the_parent(make_episode):
    ep = make_episode()
    ep.step(answer("segment", box=BOX))
    obs = ep.step(answer("refine", mask_id=1, points=[[400, 350]], labels=[1]))
    assert ep.turns[-1].error is None, obs.text
    c2 = ep.candidates[-1]
    assert (c2.id, c2.parent, c2.tool, c2.turn, c2.view_id) == (2, 1, "refine", 2, 0)
    assert c2.prompt == {"box": [250.0, 229.0, 567.0, 475.0], "points": [[400, 350]], "labels": [1]}
    assert obs.text.startswith("Candidate 2 (refined from 1) on view 0")
    assert obs.images == [ImageRef(0, (2,))]
    assert ep.mask(2)[350, 400], "a positive click is a hard foreground seed"
    ep.step(answer("refine", mask_id=2, points=[[10, 10]], labels=[0]))
    c3 = ep.candidates[-1]
    assert c3.parent == 2
    assert c3.prompt == {"box": [250.0, 229.0, 567.0, 475.0], "points": [[400, 350], [10, 10]], "labels": [1, 0]}
    # Refining an older candidate starts from its own prompt, not the latest one.
    ep.step(answer("refine", mask_id=1, points=[[300, 300]]))
    c4 = ep.candidates[-1]
    assert c4.parent == 1 and c4.prompt["points"] == [[300, 300]] and c4.prompt["labels"] == [1]
    # The parent's prompt is not mutated by its children.
    assert ep.candidates[0].prompt == {"box": [250.0, 229.0, 567.0, 475.0]}


def test_segment_with_clicks_only_and_default_labels(make_episode):
    ep = make_episode()
    ep.step(answer("segment", points=[[400, 350], [450, 300]]))
    cand = ep.candidates[-1]
    assert cand.prompt == {"points": [[400, 350], [450, 300]], "labels": [1, 1]}
    assert ep.mask(1)[350, 400] and ep.mask(1)[300, 450]


# --- views ---------------------------------------------------------------------------------------
def test_zoom_in_makes_a_view_and_later_coordinates_refer_to_it(make_episode, image):
    ep = make_episode()
    obs = ep.step(answer("zoom_in", box=BOX))
    turn = ep.turns[-1]
    assert turn.error is None and turn.view_id == 1 and turn.candidate_id is None
    view = ep.views[1]
    # 317x246 crop, long side to 640 (x 640/317 = 2.019, under max_zoom 8): 640 x round(246 * 2.019) = 497
    assert view.id == 1 and view.box == (250, 229, 567, 475) and view.size == (640, 497)
    assert view.scale == pytest.approx((640 / 317, 497 / 246))
    assert ep.current_view == 1
    assert obs.images == [ImageRef(1)]
    assert obs.text.startswith("View 1: region [250, 229, 567, 475] of view 0, enlarged 2.02x and shown at 640x497 pixels.")
    assert ep.view_pixels(1).shape == (497, 640, 3)
    # Pixel content: the crop, resampled.
    small = ep.view_pixels(1)[::50, ::50].astype(int)
    ref = image[229 + (np.arange(0, 497, 50) * 246 // 497)][:, 250 + (np.arange(0, 640, 50) * 317 // 640)]
    assert np.abs(small - ref.astype(int)).mean() < 25

    # A box given in view 1 (no "view": the current view) is mapped into the crop.
    obs = ep.step(answer("segment", box=[100, 100, 540, 450]))
    cand = ep.candidates[-1]
    assert ep.turns[-1].error is None, obs.text
    assert cand.view_id == 1
    sx, sy = 640 / 317, 497 / 246
    assert cand.prompt["box"] == pytest.approx([250 + 100 / sx, 229 + 100 / sy, 250 + 540 / sx, 229 + 450 / sy])
    mask = ep.mask(cand.id)
    assert mask.shape == (480, 640) and mask.any()
    outside = np.ones_like(mask)
    outside[229:475, 250:567] = False
    assert not mask[outside].any(), "a candidate made on view 1 lies inside view 1's crop"
    x0, y0, x1, y1 = mask_box(mask)
    assert x0 >= 250 + 100 / sx - 8 and y0 >= 229 + 100 / sy - 8 and x1 <= 250 + 540 / sx + 8 and y1 <= 229 + 450 / sy + 8
    assert "on view 1" in obs.text and obs.images == [ImageRef(1, (cand.id,))]

    # Points in view 1 map through pixel centres; refine keeps working in view 1.
    ep.step(answer("refine", mask_id=cand.id, points=[[320, 240]], view=1))
    assert ep.candidates[-1].prompt["points"][-1] == [250 + int(320.5 / sx), 229 + int(240.5 / sy)]

    # The same box is outside view 1's frame for y (497) only when it exceeds it: the frame is view 1's.
    obs = ep.step(answer("segment", box=[0, 0, 640, 498]))
    assert obs.text.startswith("Error: box [0, 0, 640, 498] is outside view 1, which is 640x497")
    obs = ep.step(answer("segment", box=[0, 400, 10, 480], view=0))
    assert ep.turns[-1].error is None and ep.candidates[-1].view_id == 0 and ep.current_view == 0


def test_zoom_limits_and_nested_zoom(make_episode):
    ep = make_episode(max_turns=10)
    ep.step(answer("zoom_in", box=[100, 100, 140, 130]))  # 40x30: x16 wanted, capped at max_zoom 8
    assert ep.views[1].box == (100, 100, 140, 130) and ep.views[1].size == (320, 240)
    ep.step(answer("zoom_in", box=[200, 200, 204, 203], view=0))  # 4x3: widened to min_zoom_side 8
    assert ep.views[2].box == (198, 197, 206, 205) and ep.views[2].size == (64, 64)
    ep.step(answer("zoom_in", box=[80, 60, 240, 180], view=1))  # in view 1 (x8): image 110..130, 107.5..122.5
    assert ep.views[3].box == (110, 107, 130, 123)
    assert ep.views[3].size == (160, 128)
    ep.step(answer("zoom_in", box=[0, 0, 640, 480], view=0))  # the whole image: scale 1
    assert ep.views[4].box == (0, 0, 640, 480) and ep.views[4].size == (640, 480)
    assert [t.view_id for t in ep.turns] == [1, 2, 3, 4]


def test_zoom_long_side_config(make_episode):
    ep = make_episode(zoom_long_side=320)
    ep.step(answer("zoom_in", box=[0, 0, 320, 160]))
    assert ep.views[1].size == (320, 160)  # scale max(1, 320/320)
    ep.step(answer("zoom_in", box=[0, 0, 100, 50], view=0))
    assert ep.views[2].size == (320, 160)


def test_segmenter_encodes_each_view_once(image, gt, target):
    seg = make_segmenter("grabcut")
    ep = Episode(EpisodeTask(image, "q", "s", gt), seg, EpisodeConfig(max_turns=8))
    ep.step(answer("segment", box=BOX))
    ep.step(answer("refine", mask_id=1, points=[[400, 350]]))
    ep.step(answer("segment", box=[0, 0, 100, 100]))
    assert seg.encode_count == 1
    ep.step(answer("zoom_in", box=BOX))
    ep.step(answer("segment", box=[0, 0, 300, 300]))
    ep.step(answer("segment", box=[10, 10, 300, 300]))
    assert seg.encode_count == 2
    # A second episode on the same image reuses the cached view 0 encoding.
    ep2 = Episode(EpisodeTask(image, "q", "s2", gt), seg, EpisodeConfig(max_turns=8))
    ep2.step(answer("segment", box=BOX))
    assert seg.encode_count == 2
    assert np.array_equal(ep2.mask(1), ep.mask(1))


# --- ending --------------------------------------------------------------------------------------
def test_submit_two_candidates_is_their_union_and_ends_the_episode(make_episode, gt, tmp_path):
    ep = make_episode()
    ep.step(answer("segment", box=BOX))
    ep.step(answer("segment", box=[0, 0, 200, 200]))
    union = ep.mask(1) | ep.mask(2)
    assert union.sum() > max(ep.mask(1).sum(), ep.mask(2).sum())
    obs = ep.step(answer("submit", mask_ids=[1, 2]))
    assert ep.done and ep.final == {"mask_ids": [1, 2], "reason": "submit", "error": None}
    assert np.array_equal(ep.answer(), union)
    area = int(union.sum())
    assert obs.text == (f"Submitted candidates [1, 2]; final mask area {area} pixels "
                        f"({100 * area / (480 * 640):.2f}% of the image). Episode over.")
    assert obs.images == []
    traj = ep.trajectory()
    assert np.array_equal(decode_rle(traj.final["rle"]), union)
    inter = int((union & gt.mask).sum())
    uni = int((union | gt.mask).sum())
    assert traj.metrics == {"iou": inter / uni, "intersection": inter, "union": uni}
    with pytest.raises(RuntimeError):
        ep.step(answer("submit", mask_ids=[1]))
    assert len(ep.turns) == 3


def test_submit_empty_list_means_no_target(make_episode):
    ep = make_episode(ground_truth=GroundTruth(np.zeros((480, 640), bool)))
    ep.step(answer("segment", box=BOX))
    obs = ep.step(answer("submit", mask_ids=[]))
    assert obs.text.startswith("Submitted no candidate (target absent); final mask area 0 pixels")
    assert ep.final["mask_ids"] == [] and not ep.answer().any()
    assert ep.turns[-1].answer_iou == 1.0  # nothing to find, nothing predicted
    assert ep.turns[0].answer_iou == 0.0


def test_budget_exhausted_the_last_candidate_is_the_answer(make_episode):
    ep = make_episode(max_turns=3)
    ep.step(answer("segment", box=BOX))
    ep.step(answer("refine", mask_id=1, points=[[300, 250]], labels=[0]))
    obs = ep.step("no tool call this time")  # the budget runs out on an invalid turn
    assert ep.done and ep.final == {"mask_ids": [2], "reason": "budget", "error": None}
    assert obs.text.startswith("Error: no <tool_call>") and PROTOCOL_HINT in obs.text
    assert obs.text.endswith("\nTurn budget exhausted: candidate 2 is the final answer.")
    assert "turns left" not in obs.text and "turn left" not in obs.text
    assert np.array_equal(ep.answer(), ep.mask(2))
    traj = ep.trajectory()
    assert traj.final["mask_ids"] == [2] and np.array_equal(decode_rle(traj.final["rle"]), ep.mask(2))
    with pytest.raises(RuntimeError, match="over"):
        ep.step(answer("submit", mask_ids=[1]))


def test_budget_exhausted_without_a_candidate_is_an_empty_answer(make_episode, gt):
    ep = make_episode(max_turns=2)
    ep.step(answer("zoom_in", box=BOX))
    obs = ep.step(answer("segment", box=[0, 0, 10, 10], view=7))
    assert ep.done and ep.final == {"mask_ids": [], "reason": "budget", "error": None}
    assert obs.text.endswith("\nTurn budget exhausted: no candidate, so the answer is empty.")
    assert not ep.answer().any() and ep.answer().shape == (480, 640)
    traj = ep.trajectory()
    assert not decode_rle(traj.final["rle"]).any()
    assert traj.metrics == {"iou": 0.0, "intersection": 0, "union": int(gt.mask.sum())}
    with pytest.raises(RuntimeError):
        ep.step(answer("zoom_in", box=BOX))


def test_one_turn_budget_with_a_valid_segment(make_episode):
    ep = make_episode(max_turns=1)
    obs = ep.step(answer("segment", box=BOX))
    assert ep.done and ep.final["reason"] == "budget" and ep.final["mask_ids"] == [1]
    assert obs.text.endswith("Turn budget exhausted: candidate 1 is the final answer.")


def test_fail_ends_the_episode_with_an_empty_answer(make_episode):
    ep = make_episode()
    ep.step(answer("segment", box=BOX))
    ep.fail("segmenter crashed")
    assert ep.done and ep.final == {"mask_ids": [], "reason": "failed", "error": "segmenter crashed"}
    assert not ep.answer().any()
    with pytest.raises(RuntimeError):
        ep.step(answer("submit", mask_ids=[1]))


# --- per-turn IoU ---------------------------------------------------------------------------------
def _script(ep: Episode) -> None:
    ep.step("<think>hm</think>")  # invalid: no call, no candidate yet
    ep.step(answer("segment", box=[0, 0, 300, 300]))
    ep.step(answer("segment", box=BOX))
    ep.step(answer("refine", mask_id=2, points=[[300, 260]], labels=[0]))
    ep.step(answer("zoom_in", box=BOX))
    ep.step(answer("refine", mask_id=3, points=[[100, 100]], view=1))
    ep.step(answer("submit", mask_ids=[3, 1]))


def test_answer_iou_per_turn_matches_a_recomputation(make_episode, gt):
    ep = make_episode()
    _script(ep)
    assert ep.done and len(ep.turns) == 7
    masks = {c.id: decode_rle(c.rle) for c in ep.candidates}
    latest = None
    for turn in ep.turns:
        if turn.candidate_id is not None:
            latest = turn.candidate_id
        if turn.tool_call and turn.tool_call["name"] == "submit":
            expected = masks[3] | masks[1]
        elif latest is None:
            expected = np.zeros((480, 640), bool)
        else:
            expected = masks[latest]
        assert turn.answer_iou == pytest.approx(iou(expected, gt), abs=1e-12), turn.index
    assert ep.turns[0].answer_iou == 0.0
    assert len({round(t.answer_iou, 6) for t in ep.turns}) >= 4


def test_answer_iou_respects_ignore_pixels(make_episode, gt):
    ignore = np.zeros((480, 640), bool)
    ignore[:, :400] = True
    g = GroundTruth(gt.mask, ignore)
    ep = make_episode(ground_truth=g)
    ep.step(answer("segment", box=BOX))
    m = ep.mask(1)
    p, t = m[:, 400:], gt.mask[:, 400:]
    assert ep.turns[0].answer_iou == pytest.approx((p & t).sum() / (p | t).sum())
    assert ep.turns[0].answer_iou != pytest.approx(iou(m, gt))


def test_no_ground_truth_means_no_answer_iou(make_episode):
    ep = make_episode(ground_truth=None)
    ep.step(answer("segment", box=BOX))
    ep.step(answer("submit", mask_ids=[1]))
    assert all(t.answer_iou is None for t in ep.turns)
    assert ep.trajectory().metrics == {}


# --- the record ----------------------------------------------------------------------------------
def test_trajectory_round_trip_is_lossless(make_episode, tmp_path):
    ep = make_episode()
    _script(ep)
    traj = ep.trajectory({"policy": "scripted"})
    assert traj.config["policy"] == "scripted" and traj.config["max_turns"] == 8
    assert traj.config["segmenter"].startswith("grabcut")
    path = tmp_path / "sub" / "trajectory.json"
    traj.save(path)
    loaded = Trajectory.load(path)
    assert loaded.to_dict() == traj.to_dict()
    assert loaded == traj
    # The document is plain JSON: reading it raw gives the same thing as to_dict.
    assert json.loads(path.read_text()) == json.loads(json.dumps(traj.to_dict()))
    assert loaded.to_dict()["schema_version"] == 1
    assert [v.size for v in loaded.views] == [(640, 480), (640, 497)]
    assert [c.id for c in loaded.candidates] == [1, 2, 3, 4]
    for cand in loaded.candidates:
        assert np.array_equal(decode_rle(cand.rle), ep.mask(cand.id))
    assert np.array_equal(decode_rle(loaded.final["rle"]), ep.answer())
    bad = traj.to_dict()
    bad["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version"):
        Trajectory.from_dict(bad)


def test_unfinished_trajectory_has_no_final_and_still_round_trips(make_episode, tmp_path):
    ep = make_episode()
    ep.step(answer("segment", box=BOX))
    traj = ep.trajectory()
    assert traj.final == {} and traj.metrics == {}
    traj.save(tmp_path / "t.json")
    assert Trajectory.load(tmp_path / "t.json").to_dict() == traj.to_dict()


def test_messages_alternate_roles(make_episode):
    ep = make_episode()
    _script(ep)
    traj = ep.trajectory()
    msgs = traj.messages()
    roles = [m["role"] for m in msgs]
    assert roles == ["system", "user"] + ["assistant", "tool"] * len(traj.turns)
    assert msgs[0]["content"] == [{"type": "text", "text": ep.system_prompt}]
    assert msgs[1]["content"] == [{"type": "text", "text": ep.user_text}, {"type": "image", "ref": ImageRef(0)}]
    assert ep.user_text == "Query: the broccoli\nThe image (view 0) is 640x480 pixels."
    for turn, a, t in zip(traj.turns, msgs[2::2], msgs[3::2]):
        assert a["content"] == [{"type": "text", "text": turn.assistant}]
        assert [p["ref"] for p in t["content"] if p["type"] == "image"] == turn.observation.images
        assert t["content"][-1] == {"type": "text", "text": turn.observation.text}
    # Images in the tool messages: candidate overlays, the zoomed view, none for errors and submit.
    images = [[p["ref"] for p in t["content"] if p["type"] == "image"] for t in msgs[3::2]]
    assert images == [[], [ImageRef(0, (1,))], [ImageRef(0, (2,))], [ImageRef(0, (3,))], [ImageRef(1)],
                      [ImageRef(1, (4,))], []]


def test_system_prompt_lists_only_the_configured_tools(make_episode):
    ep = make_episode(tools=("segment", "submit"))
    assert '"name": "segment"' in ep.system_prompt and '"name": "submit"' in ep.system_prompt
    assert '"name": "zoom_in"' not in ep.system_prompt and '"name": "refine"' not in ep.system_prompt
    assert "at most 8 turns" in ep.system_prompt
    obs = ep.step(answer("zoom_in", box=BOX))
    assert obs.text.startswith("Error: unknown tool 'zoom_in'; available tools: segment, submit")


# --- rendering -----------------------------------------------------------------------------------
def test_render_draws_the_candidate_on_the_view(make_episode, image):
    ep = make_episode()
    ep.step(answer("segment", box=BOX))
    assert np.array_equal(ep.render(ImageRef(0)), image), "view 0 without masks is the image itself"
    out = ep.render(ImageRef(0, (1,)))
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    mask = ep.mask(1)
    changed = np.any(out != image, axis=2)
    assert changed[mask].mean() > 0.95, "the translucent fill covers the candidate"
    # Far from the candidate (outside its box, with a margin for the contour) nothing changes.
    far = np.ones_like(mask)
    x0, y0, x1, y1 = (int(v) for v in mask_box(mask))
    far[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = False
    assert not changed[far].any()

    ep.step(answer("zoom_in", box=BOX))
    ep.step(answer("segment", box=[100, 100, 540, 450]))
    cid = ep.candidates[-1].id
    view = ep.views[1]
    plain = ep.view_pixels(1)
    out1 = ep.render(ImageRef(1, (cid,)))
    assert out1.shape == (view.size[1], view.size[0], 3) == (497, 640, 3)
    vmask = view.mask_from_image(ep.mask(cid))
    assert np.any(out1 != plain, axis=2)[vmask].mean() > 0.95
    # Candidate 1 from view 0 drawn on view 1 too.
    out_both = ep.render(ImageRef(1, (1, cid)))
    assert out_both.shape == out1.shape and not np.array_equal(out_both, out1)
    # A zoomed view always carries its frame and caption, even without masks.
    framed = ep.render(ImageRef(1))
    assert framed.shape == (497, 640, 3)
    assert not np.array_equal(framed, plain)
    assert np.array_equal(framed[100:400, 100:540], plain[100:400, 100:540])


def test_episode_rejects_bad_inputs(image, gt, segmenter):
    with pytest.raises(ValueError, match="RGB"):
        Episode(EpisodeTask(image[..., 0], "q"), segmenter)
    with pytest.raises(ValueError, match="does not match"):
        Episode(EpisodeTask(image, "q", gt=GroundTruth(gt.mask[:-1])), segmenter)


def test_each_rejected_turn_says_whether_the_call_was_malformed_or_could_not_be_carried_out(make_episode):
    ep = make_episode()
    ep.step("<think>no call here</think> just words")  # no parseable call
    ep.step(answer("segment", box=[1, 2, 3]))  # off the schema: a box has four numbers
    ep.step(answer("refine", mask_id=9, points=[[300, 300]]))  # well-formed, but candidate 9 does not exist
    ep.step(answer("segment", box=[300, 300, 300, 350]))  # an empty box: the arguments check rejects it too
    ep.step(answer("segment", box=BOX))
    assert [t.error_kind for t in ep.turns] == ["format", "arguments", "state", "arguments", None]
    assert all((t.error is None) == (t.error_kind is None) for t in ep.turns)
    traj = ep.trajectory()
    again = Trajectory.from_dict(json.loads(json.dumps(traj.to_dict())))
    assert [t.error_kind for t in again.turns] == ["format", "arguments", "state", "arguments", None]
