"""Every setting of an RL run (GRPO on whole episodes) as one typed dataclass, loadable from YAML.

Loaded with `config.load_config(RLConfig, FILE, **overrides)`; the resolved config is written to
OUT/train_config.yaml and into every checkpoint, and `resume` refuses settings that shape the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rsagent.core.errors import RsagentError
from rsagent.train.config import LANGUAGE_PROJECTIONS, SCHEDULERS, check_freeze_vision

# may change on --resume: length, where it runs, what and how often it logs, saves, shows and evaluates
RL_RESUMABLE_CHANGES = frozenset({
    "max_steps", "resume", "device", "save_steps", "save_total_limit", "gallery_steps", "gallery_groups",
    "rollout_batch_size", "micro_batch", "eval_steps", "eval_dataset", "eval_root", "eval_split", "eval_n",
    "eval_max_new_tokens", "eval_batch_size", "eval_sampled", "keep_best", "progress"})


@dataclass
class RLConfig:
    # prompts: a manifest / `rsagent synth` rl_prompts.jsonl file, or a dataset name (with prompts_root, prompts_split)
    prompts: str | None = None
    prompts_root: str | None = None  # None for shapes: its default folder
    prompts_split: str | None = None
    exclude_kinds: list[str] = field(default_factory=list)  # drop prompts whose loader kind is one of these
    model: str | None = None  # the SFT checkpoint (hub id or folder) the policy starts from
    out: str | None = None
    # length and batch: each step plays `group_size` episodes for each of `prompts_per_step` prompts
    max_steps: int = 100
    prompts_per_step: int = 8
    group_size: int = 8
    rollout_batch_size: int = 32  # episodes stepped in lock-step (one policy call per turn for all)
    micro_batch: int = 8  # episodes per training forward (gradients accumulate over the step)
    updates_per_step: int = 1  # optimisation passes over one step's rollouts (> 1: the clipping matters)
    # sampling and the episode
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_turns: int = 8
    segmenter: str = "grabcut"
    # the objective: group-normalised advantages, clipped ratios (asymmetric, as DAPO), optional KL (k3)
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0  # > 0 loads a frozen reference copy of `model`
    scale_advantages: bool = True  # divide by the group's standard deviation (GRPO); False: Dr. GRPO
    # rewards (rsagent.train.rewards): a weight of 0 switches a component off
    reward_final: float = 1.0
    reward_process: float = 0.5
    reward_format: float = 0.2
    process_gain: float = 1.0
    invalid_cost: float = 0.1
    noop_cost: float = 0.1
    noop_iou: float = 0.99
    # optimiser
    lr: float = 1e-6
    scheduler: str = "constant"
    warmup: float = 0.0  # < 1: a fraction of the steps; >= 1: a number of steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # what is trained
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_PROJECTIONS))
    freeze_vision: bool | str = True  # as SFTConfig's: true, false or blocks
    gradient_checkpointing: bool = False
    bf16: bool | str = "auto"
    dtype: str = "auto"
    device: str | None = None
    # logs, checkpoints, the gallery (OUT/gallery/step-N.html) and held-out rollouts (OUT/evals/step-N/)
    save_steps: int = 25
    save_total_limit: int | None = 2
    gallery_steps: int = 10  # 0: never
    gallery_groups: int = 2  # prompts shown, each with its whole group
    eval_steps: int = 0  # 0: never; otherwise also before the first step
    eval_dataset: str | None = None
    eval_root: str | None = None
    eval_split: str | None = None
    eval_n: int = 64
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 16
    # also play the held-out samples at the training temperature (OUT/evals/step-N-sampled, eval_sampled_*):
    # the mean final reward of the policy GRPO optimises, beside the greedy policy's
    eval_sampled: bool = False
    # the final weights are the checkpoint whose held-out greedy gIoU (eval_rollout_gIoU) was highest, the later
    # on a tie, not the last step's: a late collapse (a 30-step shapes run that stopped answering "absent",
    # docs/training.md) is not shipped. Candidates are steps both evaluated and saved; rotation keeps the best.
    keep_best: bool = False
    progress: bool = True
    resume: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        for name in ("prompts", "model", "out"):
            if not getattr(self, name):
                raise RsagentError(f"train rl needs --{name} (or `{name}:` in the --config file)")
        positive = ("max_steps", "prompts_per_step", "rollout_batch_size", "micro_batch", "updates_per_step",
                    "max_new_tokens", "max_turns", "save_steps", "lora_r", "eval_n", "eval_max_new_tokens",
                    "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise RsagentError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise RsagentError(f"group_size must be at least 2 (advantages compare episodes of one prompt), "
                               f"got {self.group_size}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise RsagentError("RL samples: temperature must be > 0 and top_p in (0, 1]")
        if self.lr <= 0 or self.warmup < 0 or self.kl_coef < 0 or self.clip_low < 0 or self.clip_high < 0:
            raise RsagentError("lr must be positive; warmup, kl_coef, clip_low and clip_high non-negative")
        weights = (self.reward_final, self.reward_process, self.reward_format)
        if min(weights) < 0 or not any(weights):
            raise RsagentError("reward weights must be non-negative and not all 0")
        if self.scheduler not in SCHEDULERS:
            raise RsagentError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.bf16 not in (True, False, "auto"):
            raise RsagentError(f"bf16 must be true, false or auto, got {self.bf16!r}")
        check_freeze_vision(self.freeze_vision)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise RsagentError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.eval_steps < 0 or self.gallery_steps < 0:
            raise RsagentError("eval_steps and gallery_steps must be non-negative")
        if self.eval_steps and not self.eval_dataset:
            raise RsagentError("eval_steps > 0 needs eval_dataset (e.g. --eval-dataset shapes)")
        if self.keep_best and not self.eval_steps:
            raise RsagentError("keep_best picks the final weights by the held-out rollouts: it needs eval_steps > 0")

    def reward_config(self):
        from rsagent.train.rewards import RewardConfig

        return RewardConfig(final=self.reward_final, process=self.reward_process, format=self.reward_format,
                            gain=self.process_gain, invalid_cost=self.invalid_cost, noop_cost=self.noop_cost,
                            noop_iou=self.noop_iou)
