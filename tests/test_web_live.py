"""The Segment tab's engine without a server: episodes played turn by turn (runner.play_turns) give
the same record as run_episode, and `web.live.play` streams one update per turn, then the outputs."""

from __future__ import annotations

import json

import numpy as np

from rsagent.core.mask import GroundTruth, decode_rle
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import EpisodeConfig, EpisodeTask
from rsagent.env.render import turn_overlays
from rsagent.policies.oracle import OraclePolicy
from rsagent.runner import episode_trajectory, play_turns, run_episode
from rsagent.segmenters import make_segmenter
from rsagent.web.inputs import from_shapes
from rsagent.web.live import play
from rsagent.web.render import episode_html


def _comparable(traj: Trajectory) -> dict:
    d = traj.to_dict()
    d.pop("timings")
    for turn in d["turns"]:
        turn.pop("seconds")
    return d


def test_play_turns_yields_each_turn_and_ends_like_run_episode():
    inp = from_shapes(3)
    task = EpisodeTask(inp.image, inp.query, inp.name, GroundTruth(inp.gt))
    config = EpisodeConfig(max_turns=6)
    seen = []
    for episode in play_turns(OraclePolicy(), make_segmenter("grabcut"), task, config):
        seen.append((len(episode.turns), episode.done))
    assert [n for n, _ in seen] == list(range(1, len(seen) + 1))  # one yield per turn
    assert [done for _, done in seen] == [False] * (len(seen) - 1) + [True]
    streamed = episode_trajectory(episode, OraclePolicy())
    whole = run_episode(OraclePolicy(), make_segmenter("grabcut"), task, config)
    assert _comparable(streamed) == _comparable(whole)


def test_turn_overlays_from_a_start_turn_match_the_whole_list():
    inp = from_shapes(5)
    traj = run_episode(OraclePolicy(), make_segmenter("grabcut"),
                       EpisodeTask(inp.image, inp.query, inp.name, GroundTruth(inp.gt)), EpisodeConfig(max_turns=5))
    everything = turn_overlays(traj, inp.image)
    for start in range(len(everything) + 1):
        tail = turn_overlays(traj, inp.image, start=start)
        assert len(tail) == len(everything) - start
        assert all(np.array_equal(a, b) for a, b in zip(tail, everything[start:]))


def test_live_play_streams_turns_then_writes_the_outputs(tmp_path):
    inp = from_shapes(11)
    updates = list(play(OraclePolicy(), make_segmenter("grabcut"), inp, inp.query, 8, tmp_path))
    last = updates[-1]
    assert last.done and not last.failed and all(not u.done for u in updates[:-1])
    assert [len(u.turns) for u in updates[:-1]] == list(range(1, len(updates)))  # one more turn each time
    assert len(last.turns) == len(updates)  # the last turn comes with the outputs
    traj = Trajectory.load(last.files["trajectory"])
    assert len(last.turns) == len(traj.turns) and all("<div class='turn'>" in t for t in last.turns)
    assert last.files["mask"].is_file() and "IoU" in last.status
    assert last.final is not None and last.final.ndim == 3 and min(last.final.shape[:2]) >= 448  # enlarged scene
    assert traj.metrics["iou"] > 0.5 and decode_rle(traj.final["rle"]).shape == inp.gt.shape
    json.loads(last.files["trajectory"].read_text())


def test_episode_html_with_and_without_the_source_image():
    inp = from_shapes(2)
    traj = run_episode(OraclePolicy(), make_segmenter("grabcut"),
                       EpisodeTask(inp.image, inp.query, inp.name, GroundTruth(inp.gt)), EpisodeConfig(max_turns=3))
    facts = [("sample", "<b>not bold</b>")]
    with_image = episode_html(traj, inp.image, facts)
    on_grey = episode_html(traj, None, facts, "source image not shown")
    for html in (with_image, on_grey):
        assert html.count("<div class='turn'>") == len(traj.turns)
        assert html.count("data:image/jpeg;base64,") == len(traj.turns)
        assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html  # facts are escaped
    assert "source image not shown" in on_grey and with_image != on_grey
