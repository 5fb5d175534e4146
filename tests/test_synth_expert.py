"""The synthesis expert on real COCO128 targets with GrabCut: each opening makes the first move it
names, deliberate mistakes are recognised and repaired, reasoning states nothing only the ground truth
knows, and recovery analysis finds (and cuts) harmful turns that stay uncorrected."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rsagent.core.frames import make_frame
from rsagent.core.image import load_image
from rsagent.core.mask import decode_rle, iou, mask_box
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter
from rsagent.synth.expert import ExpertPolicy, Opening, elsewhere_box, perturbed_box
from rsagent.synth.recovery import judge, replay

SAMPLES = ["000000000025-0", "000000000074-0", "000000000086-2", "000000000113-6", "000000000142-0",
           "000000000143-4"]
KINDS = ("clean_box", "jittered_box", "tight_box", "loose_box", "clicks", "wrong_region")


@pytest.fixture(scope="module")
def segmenter():
    return make_segmenter("grabcut")


@pytest.fixture(scope="module")
def tasks(coco128_target):
    out = []
    for sid in SAMPLES:
        t = coco128_target(sid)
        out.append(EpisodeTask(load_image(t.image_path), t.query, sid, t.ground_truth(), str(t.image_path)))
    return out


def _opening(kind: str, task: EpisodeTask) -> Opening:
    if kind == "wrong_region":
        box = elsewhere_box(mask_box(task.gt.mask), task.gt.shape)
        assert box is not None
        return Opening(kind, box)
    return Opening(kind)


@pytest.fixture(scope="module")
def runs(tasks, segmenter):
    """Every opening on every target, in the qwen2.5-vl frame."""
    out = {}
    for kind in KINDS:
        policy = ExpertPolicy()
        policy.frame = make_frame("qwen2.5-vl", max_pixels=200_000)
        for task in tasks:
            policy.assign(task.sample_id, _opening(kind, task))
        out[kind] = run_episodes(policy, segmenter, tasks, EpisodeConfig(max_turns=8), progress=False)
    return out


def _first_call(traj) -> dict:
    return traj.turns[0].tool_call if traj.turns[0].tool_call["name"] != "zoom_in" else traj.turns[1].tool_call


def _image_box(traj, call) -> tuple[float, ...]:
    view = next(v for v in traj.views if v.id == call["arguments"].get("view", 0))
    frame = make_frame("qwen2.5-vl", max_pixels=200_000)
    return view.box_to_image(frame.box_to_view(call["arguments"]["box"], view.size))


def test_each_opening_makes_the_first_move_it_names(runs, tasks):
    for traj, task in zip(runs["clicks"], tasks):
        args = _first_call(traj)["arguments"]
        assert "box" not in args and args["labels"] == [1] and len(args["points"]) == 1
    for kind, check in (("tight_box", lambda b, g: b[2] - b[0] < g[2] - g[0] and b[3] - b[1] < g[3] - g[1]),
                        ("loose_box", lambda b, g: b[2] - b[0] > g[2] - g[0] and b[3] - b[1] > g[3] - g[1])):
        for traj, task in zip(runs[kind], tasks):
            assert check(_image_box(traj, _first_call(traj)), mask_box(task.gt.mask)), (kind, traj.sample_id)
    for traj, task in zip(runs["clean_box"], tasks):
        box, gt_box = _image_box(traj, _first_call(traj)), mask_box(task.gt.mask)
        assert max(abs(a - b) for a, b in zip(box, gt_box)) < 6  # the tight box, up to frame rounding


def test_a_wrong_first_object_is_recognised_and_replaced(runs, tasks):
    for traj, task in zip(runs["wrong_region"], tasks):
        first = traj.candidates[0]
        assert iou(decode_rle(first.rle), task.gt) < 0.1  # the opening really segmented something else
        second = traj.turns[1]
        assert f"candidate {first.id}" in second.think.lower()
        assert second.tool_call["name"] in ("segment", "zoom_in")
        assert first.id not in traj.final["mask_ids"]  # never submitted
        assert traj.metrics["iou"] > 0.5
        verdict = judge(traj, task.gt)
        assert 1 in verdict.harmful and verdict.recovered


def test_poor_first_masks_are_redrawn_and_recovery_pays(runs, tasks):
    gains = []
    for kind in ("tight_box", "loose_box", "clicks"):
        for traj, task in zip(runs[kind], tasks):
            first = iou(decode_rle(traj.candidates[0].rle), task.gt)
            gains.append(traj.metrics["iou"] - first)
            redraws = [t for t in traj.turns[1:3] if t.tool_call["name"] == "segment"]
            if first < 0.5 and redraws:
                assert traj.candidates[1].parent is None  # a fresh prompt, not a click on the poor mask
    assert np.mean(gains) > 0.1  # later turns repair a deliberately imperfect start


def test_reasoning_states_no_ground_truth_numbers_and_never_repeats_a_template(runs):
    for trajs in runs.values():
        for traj in trajs:
            for turn in traj.turns:
                # numbers in reasoning are coordinates and ids it writes itself, never percentages
                assert "%" not in turn.think, turn.think
            thinks = [re.sub(r"[\d\[\], ]+", "#", t.think) for t in traj.turns]
            assert all(a != b for a, b in zip(thinks, thinks[1:])), thinks


def test_replay_rebuilds_the_same_trajectory(runs, tasks, segmenter):
    for traj, task in zip(runs["loose_box"][:3], tasks):
        ep = replay(traj, task, segmenter, [t.assistant for t in traj.turns])
        assert ep.done and ep.final["mask_ids"] == traj.final["mask_ids"]
        again = ep.trajectory()
        assert [c.rle for c in again.candidates] == [c.rle for c in traj.candidates]
        assert again.final["rle"] == traj.final["rle"]


def _answer(name: str, **arguments) -> str:
    return f"<think>step</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_judge_cuts_an_uncorrected_worsening_and_keeps_a_corrected_one(tasks, segmenter):
    task = tasks[0]
    x0, y0, x1, y1 = (int(v) for v in mask_box(task.gt.mask))
    ys, xs = np.nonzero(task.gt.mask)
    inside = [int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=6))
    ep.step(_answer("segment", box=[x0, y0, x1, y1]))
    ep.step(_answer("refine", mask_id=1, points=[inside], labels=[0]))  # a negative click on the target
    worse = iou(ep.mask(2), task.gt) < iou(ep.mask(1), task.gt) - 0.005
    ep.step(_answer("refine", mask_id=2, points=[inside], labels=[1]))  # the same spot back as positive
    ep.step(_answer("submit", mask_ids=[3]))
    assert worse  # a negative click in the middle of the target removes part of it
    verdict = judge(ep.trajectory(), task.gt)
    q1, q3 = iou(ep.mask(1), task.gt), iou(ep.mask(3), task.gt)
    assert 2 in verdict.harmful
    assert (verdict.cut_at is None) == (q3 >= q1) and verdict.recovered == (q3 >= q1)
    # without the correcting turn the worsening stays: cut before it
    ep2 = Episode(task, segmenter, EpisodeConfig(max_turns=6))
    ep2.step(_answer("segment", box=[x0, y0, x1, y1]))
    ep2.step(_answer("refine", mask_id=1, points=[inside], labels=[0]))
    ep2.step(_answer("submit", mask_ids=[2]))
    assert judge(ep2.trajectory(), task.gt).cut_at == 2


def test_geometry_of_openings():
    import random

    rng = random.Random(0)
    box = (100.0, 50.0, 200.0, 150.0)
    tight = perturbed_box("tight_box", box, (400, 400), rng)
    loose = perturbed_box("loose_box", box, (400, 400), rng)
    assert tight[0] > box[0] and tight[2] < box[2] and loose[0] < box[0] and loose[3] > box[3]
    region = elsewhere_box(box, (400, 400))
    assert region is not None and region[2] - region[0] == 100 and region[3] - region[1] == 100
    assert elsewhere_box((0.0, 0.0, 390.0, 380.0), (400, 400)) is None  # no room for a wrong region
