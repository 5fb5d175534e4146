"""Running episodes: one to the end, many in lock-step (one policy call per turn for all), or one
turn by turn for a caller that shows each turn as it is played."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence

from tqdm.auto import tqdm

from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.policies.base import Policy
from rsagent.segmenters.base import Segmenter


def run_episode(policy: Policy, segmenter: Segmenter, task: EpisodeTask,
                config: EpisodeConfig = EpisodeConfig()) -> Trajectory:
    """Run one episode to the end and return its trajectory."""
    return run_episodes(policy, segmenter, [task], config, progress=False)[0]


def run_episodes(policy: Policy, segmenter: Segmenter, tasks: Sequence[EpisodeTask],
                 config: EpisodeConfig = EpisodeConfig(), batch_size: int = 8, progress: bool = True,
                 on_done: Callable[[Trajectory], None] | None = None,
                 on_episode: Callable[[Episode], None] | None = None) -> list[Trajectory]:
    """Run episodes in lock-step groups of `batch_size`: each turn the policy answers all active ones.

    A crash of the policy or the segmenter ends only the episodes it touched, as `failed` with the
    error recorded (a policy may return an exception in one episode's place); it never drops them.
    `on_done` sees each trajectory as soon as it is finished; `on_episode` the finished `Episode` itself,
    while it is alive (what a policy keeps per episode, such as the qwen policy's recorded tokens, is keyed by it).
    """
    results: list[Trajectory | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=f"{policy.name}+{segmenter.name}", unit="ep", disable=not progress)
    for start in range(0, len(tasks), batch_size):
        episodes = {start + i: Episode(t, segmenter, config, policy.frame) for i, t in enumerate(tasks[start:start + batch_size])}
        active = list(episodes)
        while active:
            advance([episodes[i] for i in active], policy)
            for i in [i for i in active if episodes[i].done]:
                traj = episode_trajectory(episodes[i], policy)
                results[i] = traj
                if on_episode is not None:
                    on_episode(episodes[i])
                if on_done is not None:
                    on_done(traj)
                bar.update(1)
            active = [i for i in active if not episodes[i].done]
    bar.close()
    return results  # type: ignore[return-value]


def play_turns(policy: Policy, segmenter: Segmenter, task: EpisodeTask,
               config: EpisodeConfig = EpisodeConfig()) -> Iterator[Episode]:
    """One episode turn by turn: yields the live `Episode` after each turn (its last `Turn` is the new
    one; none is added when the turn crashed and failed the episode) until it is done. For callers that
    show turns as they happen; `episode_trajectory` then gives the same record `run_episode` returns."""
    episode = Episode(task, segmenter, config, policy.frame)
    while not episode.done:
        advance([episode], policy)
        yield episode


def advance(episodes: Sequence[Episode], policy: Policy) -> None:
    """Play one turn of every (unfinished) episode: one policy call for all, then one step each.
    A crash of the policy fails all of them; a crash in one step (or an exception returned in one
    episode's place) fails that episode alone."""
    t0 = time.perf_counter()
    try:
        answers = policy.act(list(episodes))
        if len(answers) != len(episodes):
            raise RuntimeError(f"policy returned {len(answers)} answers for {len(episodes)} episodes")
    except Exception as exc:  # noqa: BLE001 - a crash fails these episodes, never the run
        for ep in episodes:
            ep.fail(_describe(exc))
        return
    policy_seconds = (time.perf_counter() - t0) / max(1, len(episodes))
    for ep, answer in zip(episodes, answers):
        if isinstance(answer, Exception):  # the policy could not answer this episode
            ep.fail(_describe(answer))
            continue
        try:
            ep.step(answer)
            ep.turns[-1].seconds["policy"] = policy_seconds
        except Exception as exc:  # noqa: BLE001 - e.g. a segmenter that raises on this image
            ep.fail(_describe(exc))


def episode_trajectory(episode: Episode, policy: Policy) -> Trajectory:
    """The record of an episode, with the policy that played it."""
    return episode.trajectory({"policy": policy.identifier, "policy_settings": policy.settings})


def _describe(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"
