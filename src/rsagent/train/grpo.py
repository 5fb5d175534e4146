"""The GRPO objective on whole episodes: group-normalised advantages and the clipped, token-level loss.

Every token an episode's policy generated carries its episode's advantage. The loss of a step is the
sum over all its tokens of the clipped surrogate (plus the k3 KL estimate to a reference model when
asked), divided by the number of tokens in the step: token-level normalisation, so long episodes are
not down-weighted per token (DAPO). Groups whose rewards are all equal teach nothing and are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def group_advantages(rewards: Sequence[float], group_size: int, scale: bool = True,
                     eps: float = 1e-6) -> tuple[list[float], list[bool]]:
    """(advantage per episode, skipped per group) for rewards laid out group by group.

    A = r - mean(group), divided by the group's standard deviation (population) when `scale`.
    A group whose rewards are all equal (within 1e-9) is skipped: its advantages are 0."""
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    advantages: list[float] = []
    skipped: list[bool] = []
    for start in range(0, len(rewards), group_size):
        group = [float(r) for r in rewards[start:start + group_size]]
        mean = math.fsum(group) / len(group)
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in group) / len(group))
        flat = max(group) - min(group) <= 1e-9
        skipped.append(flat)
        advantages += [0.0 if flat else (r - mean) / (std + eps if scale else 1.0) for r in group]
    return advantages, skipped


@dataclass
class LossParts:
    loss: torch.Tensor  # summed over the tokens given (divide by the step's token count outside)
    clipped: int  # tokens whose ratio was clipped (the surrogate's gradient is zero there)
    ratio_sum: float
    ratio_max: float
    kl_sum: float
    tokens: int


def clipped_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 clip_low: float, clip_high: float, ref_logprobs: torch.Tensor | None = None,
                 kl_coef: float = 0.0) -> LossParts:
    """PPO's clipped surrogate per token, summed: -min(r A, clip(r, 1 - low, 1 + high) A) [+ kl_coef k3]."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    kl_sum = 0.0
    if ref_logprobs is not None and kl_coef > 0:
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1.0  # k3: unbiased, non-negative
        per_token = per_token + kl_coef * kl
        kl_sum = float(kl.detach().sum())
    with torch.no_grad():
        was_clipped = (clipped < unclipped).sum()
    return LossParts(per_token.sum(), int(was_clipped), float(ratio.detach().sum()),
                     float(ratio.detach().max()) if len(ratio) else 1.0, kl_sum, len(ratio))
