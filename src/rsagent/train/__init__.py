"""Training the qwen policy: on shapes first grounding (`train_ground`: single first turns that box the
queried shape), cold-start SFT (`train_sft`) on TRL's SFTTrainer on synthesized trajectories, then
agentic RL (`train_rl`): GRPO on whole episodes of the project's environment.

This layer sits above eval and synth (it reads their exports and reuses the eval runner for
rollouts during training) and below the CLI; nothing else imports it.
"""

from rsagent.train.config import SFTConfig, load_config, load_sft_config
from rsagent.train.ground_config import GroundConfig
from rsagent.train.rl_config import RLConfig

__all__ = ["GroundConfig", "RLConfig", "SFTConfig", "load_ground_config", "load_rl_config", "load_sft_config",
           "train_ground", "train_rl", "train_sft"]


def load_ground_config(path=None, **overrides) -> GroundConfig:
    return load_config(GroundConfig, path, paths=("out", "model"), **overrides)


def load_rl_config(path=None, **overrides) -> RLConfig:
    return load_config(RLConfig, path, paths=("out", "eval_root", "prompts_root"), **overrides)


def train_sft(config: SFTConfig) -> dict:
    """See `rsagent.train.sft.train_sft` (imported lazily: it needs torch, transformers and trl)."""
    from rsagent.train.sft import train_sft as run

    return run(config)


def train_rl(config: RLConfig) -> dict:
    """See `rsagent.train.rl.train_rl` (imported lazily: it needs torch, transformers and accelerate)."""
    from rsagent.train.rl import train_rl as run

    return run(config)


def train_ground(config: GroundConfig, model_dir=None) -> dict:
    """See `rsagent.train.ground.train_ground` (imported lazily: it needs torch and transformers)."""
    from rsagent.train.ground import train_ground as run

    return run(config, model_dir)
