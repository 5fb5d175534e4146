"""Training on synthesized trajectories: cold-start SFT (`train_sft`) on TRL's SFTTrainer.

This layer sits above eval and synth (it reads their exports and reuses the eval runner for
rollouts during training) and below the CLI; nothing else imports it.
"""

from rsagent.train.config import SFTConfig, load_sft_config

__all__ = ["SFTConfig", "load_sft_config", "train_sft"]


def train_sft(config: SFTConfig) -> dict:
    """See `rsagent.train.sft.train_sft` (imported lazily: it needs torch, transformers and trl)."""
    from rsagent.train.sft import train_sft as run

    return run(config)
