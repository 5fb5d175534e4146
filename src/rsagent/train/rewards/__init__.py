"""Reward functions for agentic RL: pure functions of a finished `Trajectory` and its `GroundTruth`.

- `final_reward`: the LISA IoU of the final mask (0 for a crashed or unfinished episode);
- `process_reward`: credit for improving the best candidate after the first, minus costs for
  rejected turns and for executed turns that changed nothing;
- `format_reward`: 1 - malformed turns / turn budget;
- `score_trajectory`: their weighted sum under a `RewardConfig`, with a flat breakdown.

numpy and project modules only (no torch): rollout workers import this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from rsagent.core.mask import GroundTruth
from rsagent.core.trajectory import Trajectory
from rsagent.train.rewards.base import Reward
from rsagent.train.rewards.final import final_reward
from rsagent.train.rewards.format import format_reward
from rsagent.train.rewards.process import process_reward

__all__ = ["Reward", "RewardConfig", "final_reward", "format_reward", "process_reward", "score_trajectory"]


@dataclass(frozen=True)
class RewardConfig:
    """Component weights (0 switches a component off) and the process reward's knobs."""

    final: float = 1.0
    process: float = 0.5
    format: float = 0.2
    gain: float = 1.0
    invalid_cost: float = 0.1
    noop_cost: float = 0.1
    noop_iou: float = 0.99

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RewardConfig.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.noop_iou <= 1.0:
            raise ValueError(f"RewardConfig.noop_iou must be in [0, 1], got {self.noop_iou}")

    def to_dict(self) -> dict:
        return asdict(self)


def score_trajectory(traj: Trajectory, gt: GroundTruth, config: RewardConfig = RewardConfig()) -> Reward:
    """score = sum of weight x component score over the components whose weight is not 0 (the others
    are not computed). Breakdown: per component "<name>" (its unweighted score) and "<name>/<key>"
    (its breakdown), plus "total" (= score)."""
    components = {
        "final": lambda: final_reward(traj, gt),
        "process": lambda: process_reward(traj, gt, gain=config.gain, invalid_cost=config.invalid_cost,
                                          noop_cost=config.noop_cost, noop_iou=config.noop_iou),
        "format": lambda: format_reward(traj),
    }
    total = 0.0
    breakdown: dict[str, float] = {}
    for name, compute in components.items():
        weight = getattr(config, name)
        if weight == 0:
            continue
        reward = compute()
        total += weight * reward.score
        breakdown[name] = reward.score
        breakdown.update({f"{name}/{key}": value for key, value in reward.breakdown.items()})
    breakdown["total"] = total
    return Reward(total, breakdown)
