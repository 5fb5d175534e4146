"""The format reward: the share of the turn budget not spent on malformed answers."""

from __future__ import annotations

from rsagent.core.trajectory import Trajectory
from rsagent.train.rewards.base import Reward


def format_reward(traj: Trajectory) -> Reward:
    """1 - (turns with `format_ok` False) / max_turns, clipped to [0, 1].

    max_turns is the episode's budget (`traj.config["max_turns"]`), else the number of turns, else 1.
    Dividing by the budget, not by the number of turns taken, means a well-formed turn never raises
    the score (with the fallback it would: 1 bad turn of 2 scores 0.5, of 3 scores 0.67). A turn the
    episode rejected for its arguments or state also has format_ok False (env.episode).
    Breakdown: malformed, turns, max_turns.
    """
    malformed = sum(1 for t in traj.turns if not t.format_ok)
    max_turns = int((traj.config or {}).get("max_turns") or len(traj.turns) or 1)
    score = min(1.0, max(0.0, 1.0 - malformed / max_turns))
    return Reward(score, {"malformed": float(malformed), "turns": float(len(traj.turns)),
                          "max_turns": float(max_turns)})
