"""Reward functions for RL (rsagent.train.rewards) on hand-built trajectories with 20x20 masks, and
once on a real GrabCut episode.

Ground truth of the hand-built cases: the 10x10 square rows/cols 5..14 (100 pixels). Candidates:
A = its top half (50 px, IoU 0.5), B = its top 9 rows (90 px, IoU 0.9), C = the square rows/cols
0..9 (100 px, 25 inside: IoU 25/175 = 1/7).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from rsagent.core.mask import GroundTruth, decode_rle, encode_rle, mask_box
from rsagent.core.trajectory import Candidate, ImageRef, Observation, Trajectory, Turn
from rsagent.core.view import View
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.segmenters import make_segmenter
from rsagent.train.rewards import (Reward, RewardConfig, final_reward, format_reward, process_reward,
                                   score_trajectory)

H = W = 20


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


GT = GroundTruth(rect(5, 5, 15, 15))
A, B, C = rect(5, 5, 15, 10), rect(5, 5, 15, 14), rect(0, 0, 10, 10)
EMPTY = np.zeros((H, W), bool)


def build(steps: list[tuple], final: np.ndarray | None = None, reason: str = "submit",
          max_turns: int | None = 8) -> Trajectory:
    """A trajectory from steps: ("segment"|"refine", mask), ("zoom", box), ("submit",),
    ("malformed",) (no parseable call), ("bad_args",) (parsed, rejected). The final mask defaults to
    the last candidate's (empty without one)."""
    views = [View.full(W, H)]
    cands: list[Candidate] = []
    turns: list[Turn] = []
    masks: list[np.ndarray] = []
    for index, (kind, *args) in enumerate(steps, start=1):
        turn = Turn(index=index, assistant=f"turn {index}", think="t", tool_call=None, error=None,
                    format_ok=True, observation=Observation("ok"))
        if kind in ("segment", "refine"):
            (mask,) = args
            cid = len(cands) + 1
            box = mask_box(mask)
            cands.append(Candidate(id=cid, rle=encode_rle(mask), view_id=0, turn=index, tool=kind,
                                   parent=cid - 1 if kind == "refine" else None, prompt={}, score=1.0,
                                   area=int(mask.sum()), box=None if box is None else list(box)))
            masks.append(mask)
            turn.tool_call = {"name": kind, "arguments": {}}
            turn.candidate_id = cid
            turn.observation = Observation("cand", [ImageRef(0, (cid,))])
        elif kind == "zoom":
            (box,) = args
            views.append(View(len(views), tuple(box), (W, H)))
            turn.tool_call = {"name": "zoom_in", "arguments": {"box": list(box)}}
            turn.view_id = len(views) - 1
        elif kind == "submit":
            turn.tool_call = {"name": "submit", "arguments": {"mask_ids": [len(cands)] if cands else []}}
        elif kind == "malformed":
            turn.error, turn.error_kind, turn.format_ok = "no tool call", "format", False
        elif kind == "bad_args":
            turn.tool_call = {"name": "segment", "arguments": {"box": [1, 2]}}
            turn.error, turn.error_kind, turn.format_ok = "box must have 4 numbers", "arguments", False
        else:
            raise AssertionError(kind)
        turns.append(turn)
    if final is None:
        final = masks[-1] if masks else EMPTY
    config = {} if max_turns is None else {"max_turns": max_turns}
    return Trajectory(sample_id="s", query="the square", image={"path": None, "width": W, "height": H},
                      system_prompt="sys", user_text="user", config=config, views=views, candidates=cands,
                      turns=turns, final={"mask_ids": [len(cands)] if cands else [], "rle": encode_rle(final),
                                          "reason": reason, "error": None})


def lisa_iou_numpy(pred: np.ndarray, gt: GroundTruth) -> float:
    """LISA's IoU written out independently of rsagent."""
    valid = np.ones_like(gt.mask) if gt.ignore is None else ~gt.ignore
    p, g = pred & valid, gt.mask & valid
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else np.logical_and(p, g).sum() / union


# --- final -----------------------------------------------------------------------------------------
def test_final_reward_is_the_lisa_iou_of_the_submitted_mask():
    r = final_reward(build([("segment", A), ("refine", B), ("submit",)]), GT)
    assert isinstance(r, Reward)
    assert r.score == pytest.approx(0.9)
    assert r.breakdown == {"iou": pytest.approx(0.9), "intersection": 90.0, "union": 100.0, "submitted": 1.0,
                           "failed": 0.0}
    r = final_reward(build([("segment", C), ("submit",)]), GT)
    assert r.score == pytest.approx(1 / 7) == lisa_iou_numpy(C, GT)
    assert (r.breakdown["intersection"], r.breakdown["union"]) == (25.0, 175.0)


def test_final_reward_with_an_ignore_region():
    # ignore: rows 0-1 (outside the target) and rows 5-6 of the target
    ignore = rect(0, 0, 20, 2) | rect(5, 5, 15, 7)
    gt = GroundTruth(GT.mask, ignore)
    pred = rect(5, 0, 15, 10)  # rows 0..9, cols 5..14
    # pred \ ignore: rows 2-4 and 7-9 (60 px); gt \ ignore: rows 7-14 (80 px); I = rows 7-9 = 30; U = 110
    r = final_reward(build([("segment", pred), ("submit",)]), gt)
    assert r.score == pytest.approx(30 / 110) == lisa_iou_numpy(pred, gt)
    assert (r.breakdown["intersection"], r.breakdown["union"]) == (30.0, 110.0)
    # The same mask without the ignore region scores differently: I = 50, U = 150.
    assert final_reward(build([("segment", pred), ("submit",)]), GT).score == pytest.approx(1 / 3)


def test_final_reward_absent_target_budget_failed_missing_and_size():
    absent = GroundTruth(EMPTY)
    assert final_reward(build([("submit",)]), absent).score == 1.0  # empty submit on an absent target
    assert final_reward(build([("segment", A), ("submit",)]), absent).score == 0.0
    budget = final_reward(build([("segment", A)], reason="budget"), GT)
    assert budget.score == pytest.approx(0.5) and budget.breakdown["submitted"] == 0.0
    # A crash scores 0 even though its (empty) final mask would match an absent target.
    failed = build([("segment", A)], final=EMPTY, reason="failed")
    assert final_reward(failed, absent) == Reward(0.0, {"iou": 0.0, "submitted": 0.0, "failed": 1.0})
    unfinished = build([("segment", A)])
    unfinished.final = {}
    assert final_reward(unfinished, GT) == Reward(0.0, {"iou": 0.0, "submitted": 0.0, "failed": 0.0,
                                                         "missing": 1.0})
    with pytest.raises(ValueError, match=r"final mask: RLE size \[h, w\] = \[20, 20\] does not match the "
                                         r"ground truth's \[20, 21\]"):
        final_reward(build([("submit",)]), GroundTruth(np.zeros((20, 21), bool)))


# --- process ---------------------------------------------------------------------------------------
def test_improvement_credits_corrections_not_the_first_candidate():
    good = process_reward(build([("segment", A), ("refine", B), ("submit",)]), GT)
    assert good.score == pytest.approx(0.4)
    assert good.breakdown == {"improvement": pytest.approx(0.4), "invalid": 0.0, "noop": 0.0,
                              "best_iou": pytest.approx(0.9), "first_iou": pytest.approx(0.5)}
    worse = process_reward(build([("segment", B), ("refine", A), ("submit",)]), GT)
    assert worse.score == 0.0 and worse.breakdown["improvement"] == 0.0
    assert worse.breakdown["best_iou"] == pytest.approx(0.9) == worse.breakdown["first_iou"]
    # A detour through a worse candidate earns nothing for it: 0.5 -> 1/7 -> 0.9 is credited 0.4.
    detour = process_reward(build([("segment", A), ("segment", C), ("refine", B)]), GT)
    assert detour.breakdown["improvement"] == pytest.approx(0.4)
    only_first = process_reward(build([("segment", B), ("submit",)]), GT)
    assert only_first.score == 0.0 and only_first.breakdown["first_iou"] == pytest.approx(0.9)
    none = process_reward(build([("submit",)]), GT)
    assert none.breakdown == {"improvement": 0.0, "invalid": 0.0, "noop": 0.0, "best_iou": 0.0, "first_iou": 0.0}
    # gain scales the credit; the costs are per turn.
    assert process_reward(build([("segment", A), ("refine", B)]), GT, gain=2.5).score == pytest.approx(1.0)


def test_invalid_and_noop_costs():
    traj = build([("malformed",), ("segment", A), ("bad_args",), ("segment", A.copy()), ("zoom", (0, 0, 20, 20)),
                  ("zoom", (2, 2, 12, 12)), ("zoom", (2, 2, 12, 12)), ("refine", B)])
    r = process_reward(traj, GT)
    # invalid: turns 1 and 3; no-ops: the repeated A, the zoom onto view 0's box, the repeated zoom
    assert r.breakdown["invalid"] == 2.0 and r.breakdown["noop"] == 3.0
    assert r.breakdown["improvement"] == pytest.approx(0.4)
    assert r.score == pytest.approx(0.4 - 0.1 * 2 - 0.1 * 3)
    assert process_reward(traj, GT, gain=1.0, invalid_cost=0.5, noop_cost=0.25).score == pytest.approx(
        0.4 - 0.5 * 2 - 0.25 * 3)
    # Two empty candidates are identical; submit is never a no-op.
    empties = process_reward(build([("segment", EMPTY), ("segment", EMPTY), ("submit",), ]), GT)
    assert empties.breakdown["noop"] == 1.0
    # Near-identical by the threshold: B plus one target pixel has IoU 90/91 = 0.989 with B.
    b_plus = B | rect(5, 14, 6, 15)
    assert process_reward(build([("segment", B), ("refine", b_plus)]), GT).breakdown["noop"] == 0.0
    near = process_reward(build([("segment", B), ("refine", b_plus)]), GT, noop_iou=0.98)
    # A no-op earns no credit, though b_plus is better (0.91 vs 0.9).
    assert near.breakdown == {"improvement": 0.0, "invalid": 0.0, "noop": 1.0, "best_iou": pytest.approx(0.9),
                              "first_iou": pytest.approx(0.9)}
    with pytest.raises(ValueError, match="noop_iou"):
        process_reward(traj, GT, noop_iou=1.5)


# --- format ----------------------------------------------------------------------------------------
def test_format_reward_divides_by_the_budget():
    traj = build([("malformed",), ("segment", A), ("bad_args",), ("submit",)])
    assert format_reward(traj) == Reward(0.75, {"malformed": 2.0, "turns": 4.0, "max_turns": 8.0})
    assert format_reward(build([("segment", A), ("submit",)])).score == 1.0
    # Without a budget in the config: the number of turns; with no turns: 1.
    assert format_reward(build([("malformed",), ("segment", A), ("submit",), ("submit",)],
                               max_turns=None)).score == 0.75
    assert format_reward(build([], max_turns=None)) == Reward(1.0, {"malformed": 0.0, "turns": 0.0,
                                                                     "max_turns": 1.0})
    # Clipped at 0.
    assert format_reward(build([("malformed",)] * 3, max_turns=2)).score == 0.0


# --- total -----------------------------------------------------------------------------------------
def test_score_trajectory_sums_weighted_components_and_flattens_the_breakdown():
    traj = build([("segment", A), ("malformed",), ("refine", B), ("submit",)])
    r = score_trajectory(traj, GT)
    # final 0.9; process 0.4 - 0.1 (one invalid) = 0.3; format 1 - 1/8 = 0.875
    assert r.score == pytest.approx(0.9 + 0.5 * 0.3 + 0.2 * 0.875)
    assert r.breakdown["total"] == r.score
    assert r.breakdown["final"] == pytest.approx(0.9) and r.breakdown["final/iou"] == pytest.approx(0.9)
    assert r.breakdown["process"] == pytest.approx(0.3) and r.breakdown["process/invalid"] == 1.0
    assert r.breakdown["format"] == 0.875 and r.breakdown["format/malformed"] == 1.0
    assert set(r.breakdown) == {"final", "final/iou", "final/intersection", "final/union", "final/submitted",
                                "final/failed", "process", "process/improvement", "process/invalid",
                                "process/noop", "process/best_iou", "process/first_iou", "format",
                                "format/malformed", "format/turns", "format/max_turns", "total"}
    cfg = RewardConfig(final=2.0, process=0.0, format=0.0)
    only_final = score_trajectory(traj, GT, cfg)
    assert only_final.score == pytest.approx(1.8)
    assert set(only_final.breakdown) == {"final", "final/iou", "final/intersection", "final/union",
                                         "final/submitted", "final/failed", "total"}
    # A weight of 0 means "not computed": a final mask of the wrong size is then not even read.
    bad = build([("malformed",)])
    bad.final["rle"] = encode_rle(np.zeros((3, 3), bool))
    assert score_trajectory(bad, GT, RewardConfig(final=0.0, process=0.0, format=1.0)).score == 0.875
    with pytest.raises(ValueError):
        score_trajectory(bad, GT)
    knobs = RewardConfig(gain=2.0, invalid_cost=0.3, noop_cost=0.0, noop_iou=0.9)
    assert score_trajectory(traj, GT, knobs).breakdown["process"] == pytest.approx(2.0 * 0.4 - 0.3)
    assert knobs.to_dict() == {"final": 1.0, "process": 0.5, "format": 0.2, "gain": 2.0, "invalid_cost": 0.3,
                               "noop_cost": 0.0, "noop_iou": 0.9}
    for bad_cfg in ({"noop_iou": 2.0}, {"final": float("nan")}, {"process": "1"}):
        with pytest.raises(ValueError):
            RewardConfig(**bad_cfg)


# --- invariant: wasted turns never pay -------------------------------------------------------------
BASE = [("segment", A), ("refine", B), ("submit",)]


def _wasted_turns(before: list[tuple], noop_iou: float) -> list[tuple]:
    """Turns that waste a turn when inserted after `before`: rejected ones, and executed no-ops."""
    out = [("malformed",), ("bad_args",), ("zoom", (0, 0, W, H))]
    zooms = [s for s in before if s[0] == "zoom"]
    out += [("zoom", zooms[-1][1])] if zooms else []
    masks = [s[1] for s in before if s[0] in ("segment", "refine")]
    if masks:
        last = masks[-1]
        out += [("segment", last.copy()), ("refine", last.copy())]
        # a near-copy one pixel better, when the threshold makes it a no-op
        for extra in (rect(5, 14, 6, 15), rect(6, 14, 7, 15), rect(14, 10, 15, 11)):
            near = last | extra
            union = np.logical_or(near, last).sum()
            if near.sum() != last.sum() and np.logical_and(near, last).sum() / union >= noop_iou:
                out.append(("refine", near))
                break
    return out


@pytest.mark.parametrize("knobs", [
    {},
    {"gain": 10.0, "noop_cost": 0.01, "noop_iou": 0.95},  # where crediting a no-op's tiny gain would pay
    {"invalid_cost": 0.0, "noop_cost": 0.0},
])
def test_inserting_invalid_or_noop_turns_never_raises_the_score(knobs):
    base_steps = [("segment", A), ("zoom", (2, 2, 12, 12)), ("refine", B), ("submit",)]
    weights = list(itertools.product((0.0, 0.3, 1.0), repeat=3))
    base_traj = build(base_steps, final=B)
    variants = 0
    for pos in range(len(base_steps)):  # insert before each turn (the submit is last)
        for waste in _wasted_turns(base_steps[:pos], knobs.get("noop_iou", 0.99)):
            for second in [None] + _wasted_turns(base_steps[:pos] + [waste], knobs.get("noop_iou", 0.99)):
                extra = [waste] if second is None else [waste, second]
                traj = build(base_steps[:pos] + extra + base_steps[pos:], final=B)
                p = process_reward(traj, GT, **knobs)
                assert p.breakdown["invalid"] + p.breakdown["noop"] == len(extra), (pos, extra)
                variants += 1
                for wf, wp, wfmt in weights:
                    cfg = RewardConfig(final=wf, process=wp, format=wfmt, **knobs)
                    base = score_trajectory(base_traj, GT, cfg).score
                    assert score_trajectory(traj, GT, cfg).score <= base + 1e-12, (pos, extra, cfg)
    assert variants > 50


# --- a real episode --------------------------------------------------------------------------------
def tool_call(name: str, arguments: dict) -> str:
    return ("<think>The red square is the target.</think>\n<tool_call>\n"
            + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>")


def test_rewards_of_a_real_grabcut_episode():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 12, (64, 80, 3)), 0, 255).astype(np.uint8)
    image[20:44, 30:54] = (220, 30, 30)
    target = np.zeros((64, 80), bool)
    target[20:44, 30:54] = True
    ignore = np.zeros_like(target)
    ignore[20:24, 30:54] = True  # the square's top rows are don't-care
    gt = GroundTruth(target, ignore)
    ep = Episode(EpisodeTask(image, "the red square", "red", gt), make_segmenter("grabcut"), EpisodeConfig(max_turns=5))
    ep.step(tool_call("segment", {"box": [26, 16, 58, 48]}))
    ep.step("I think it is the square")  # malformed: no tool call
    ep.step(tool_call("zoom_in", {"box": [0, 0, 80, 64]}))  # the full image again: a no-op
    ep.step(tool_call("submit", {"mask_ids": [1]}))
    assert ep.done
    traj = Trajectory.from_dict(json.loads(json.dumps(ep.trajectory().to_dict())))  # as saved and read back
    pred = decode_rle(traj.final["rle"])
    expected = lisa_iou_numpy(pred, gt)
    assert expected > 0.8  # GrabCut finds the square
    r = final_reward(traj, gt)
    assert r.score == pytest.approx(expected, abs=1e-12) == traj.metrics["iou"]
    assert r.breakdown["submitted"] == 1.0
    p = process_reward(traj, gt)
    assert p.breakdown == {"improvement": 0.0, "invalid": 1.0, "noop": 1.0, "best_iou": pytest.approx(expected),
                           "first_iou": pytest.approx(expected)}
    f = format_reward(traj)
    assert f == Reward(1 - 1 / 5, {"malformed": 1.0, "turns": 4.0, "max_turns": 5.0})
    total = score_trajectory(traj, gt)
    assert total.score == pytest.approx(expected + 0.5 * (-0.2) + 0.2 * 0.8)
