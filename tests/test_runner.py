"""The runner: lock-step batches keep every task, and crashes fail only the episodes they touch."""

from __future__ import annotations

import pytest

from rsagent.core.image import load_image
from rsagent.env.episode import EpisodeConfig, EpisodeTask, image_key
from rsagent.policies.base import Policy
from rsagent.policies.oracle import OraclePolicy
from rsagent.runner import run_episode, run_episodes
from rsagent.segmenters.grabcut import GrabCutSegmenter


class RaisesOnSomeImages(GrabCutSegmenter):
    """A real GrabCut that fails to encode chosen images, like a segmenter hitting a bad input."""

    def __init__(self, bad_keys: set[str]) -> None:
        super().__init__()
        self.bad_keys = bad_keys

    def set_image(self, image, key=None):
        if key is not None and key[0] in self.bad_keys:
            raise RuntimeError("simulated encoder failure")
        super().set_image(image, key)


class CountingOracle(OraclePolicy):
    """The oracle, recording how many episodes each call answered (lock-step evidence)."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def act(self, episodes):
        self.batch_sizes.append(len(episodes))
        return super().act(episodes)


@pytest.fixture(scope="module")
def tasks(coco128_targets):
    picked = [t for t in coco128_targets if t.area_fraction > 0.02][:5]
    return [EpisodeTask(load_image(t.image_path), t.query, t.sample_id, t.ground_truth(), str(t.image_path))
            for t in picked]


def test_lock_step_batches_answer_all_active_episodes_together(tasks):
    policy = CountingOracle()
    trajs = run_episodes(policy, GrabCutSegmenter(), tasks, EpisodeConfig(max_turns=4), batch_size=3, progress=False)
    assert [t.sample_id for t in trajs] == [t.sample_id for t in tasks]
    assert policy.batch_sizes[0] == 3  # first group: 3 episodes answered in one call
    assert max(policy.batch_sizes) == 3 and 2 in policy.batch_sizes  # second group: the remaining 2
    assert all(t.final["reason"] in ("submit", "budget") for t in trajs)
    # the same episodes run one at a time give the same answers (lock-step changes nothing)
    single = [run_episode(OraclePolicy(), GrabCutSegmenter(), task, EpisodeConfig(max_turns=4)) for task in tasks]
    assert [t.final["rle"] for t in trajs] == [t.final["rle"] for t in single]


def test_segmenter_crash_fails_only_that_episode(tasks):
    bad = image_key(tasks[1].image)
    trajs = run_episodes(OraclePolicy(), RaisesOnSomeImages({bad}), tasks, EpisodeConfig(max_turns=4), progress=False)
    assert len(trajs) == len(tasks)
    failed = [t for t in trajs if t.final["reason"] == "failed"]
    # every task on that image failed (several COCO targets may share it), and nothing else did
    assert {t.sample_id for t in failed} == {task.sample_id for task in tasks if image_key(task.image) == bad}
    assert "simulated encoder failure" in failed[0].final["error"]
    assert failed[0].metrics["iou"] == 0.0 and failed[0].metrics["intersection"] == 0
    assert all(t.metrics["iou"] > 0 for t in trajs if t.final["reason"] != "failed")


class WrongCount(Policy):
    name = "wrong-count"

    def act(self, episodes):
        return ["<think>x</think>"] * (len(episodes) + 1)


def test_policy_returning_the_wrong_number_of_answers_fails_the_batch(tasks):
    trajs = run_episodes(WrongCount(), GrabCutSegmenter(), tasks[:2], progress=False)
    assert [t.final["reason"] for t in trajs] == ["failed", "failed"]
    assert "3 answers for 2 episodes" in trajs[0].final["error"]


def test_on_done_sees_each_trajectory_once(tasks):
    seen = []
    run_episodes(OraclePolicy(), GrabCutSegmenter(), tasks[:3], EpisodeConfig(max_turns=3), on_done=seen.append,
                 progress=False)
    assert sorted(t.sample_id for t in seen) == sorted(t.sample_id for t in tasks[:3])


def test_cache_is_shared_across_episodes_on_the_same_image(tasks):
    segmenter = GrabCutSegmenter()
    same = [EpisodeTask(tasks[0].image, q, f"s{i}", tasks[0].gt) for i, q in enumerate(["a", "b", "c"])]
    trajs = run_episodes(OraclePolicy(), segmenter, same, EpisodeConfig(max_turns=3), progress=False)
    used = {(tuple(v.box), tuple(v.size)) for t in trajs for c in t.candidates for v in t.views if v.id == c.view_id}
    assert sum(len(t.candidates) for t in trajs) >= 3
    assert segmenter.encode_count == len(used)  # one encode per distinct view, not per episode or call
