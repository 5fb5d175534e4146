"""Trainer callbacks: every log as a JSON line, the config in every checkpoint, rollouts on held-out data.

TensorBoard is transformers' own callback (`report_to=["tensorboard"]`); the rollout metrics go
through `trainer.log` like the loss, so they reach TensorBoard, log.jsonl and the trainer state alike.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from functools import partial
from pathlib import Path

from transformers import TrainerCallback

from rsagent.train.config import CONFIG_FILE, SFTConfig, write_config

LOG_FILE = "log.jsonl"
EVAL_DIR = "evals"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JSONLLogger(TrainerCallback):
    """Appends each log (loss, learning_rate, grad_norm, epoch, step, tokens, tokens/s, rollout metrics)
    to OUT/log.jsonl. Tokens per second are measured between consecutive logs, from the trainer's
    count of non-padding input tokens."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / LOG_FILE
        self._last: tuple[float, int] | None = None
        self._paused = 0.0  # seconds of rollouts since the last loss log: not training time

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen)
        self._paused = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **{k: _jsonable(v) for k, v in logs.items()}}
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        self._paused += float(logs.get("eval_rollout_seconds", 0.0))
        if self._last is not None and tokens > self._last[1] and "loss" in logs:
            row["tokens_per_second"] = (tokens - self._last[1]) / max(now - self._last[0] - self._paused, 1e-9)
            self._last, self._paused = (now, tokens), 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


class ConfigInCheckpoint(TrainerCallback):
    """OUT/checkpoint-N/train_config.yaml: a checkpoint says how it was made, even copied elsewhere."""

    def __init__(self, config: SFTConfig) -> None:
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_config(self.config, folder / CONFIG_FILE)


class RolloutEval(TrainerCallback):
    """Every `eval_steps`, the current model plays episodes on held-out data through the real environment
    with `rsagent.eval.run.evaluate` (the code `rsagent eval` runs), writing OUT/evals/step-N/; logs
    gIoU, cIoU and the rate of well-formed tool calls (turns whose call parsed and executed)."""

    def __init__(self, config: SFTConfig, dataset, processor, max_turns: int, min_pixels: int,
                 max_pixels: int) -> None:
        self.config, self.dataset, self.processor = config, dataset, processor
        self.max_turns, self.min_pixels, self.max_pixels = max_turns, min_pixels, max_pixels
        self.trainer = None  # set by `bind`: metrics are logged through the trainer

    def bind(self, trainer) -> None:
        self.trainer = trainer
        if _sharded(trainer):
            warnings.warn("rollout evaluation is off: the weights are sharded across processes (ZeRO-3 / FSDP); "
                          "evaluate the checkpoints with `rsagent eval --policy qwen --model OUT/checkpoint-N`",
                          stacklevel=2)
            self.config = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        cfg = self.config
        if cfg is None or not cfg.eval_steps or state.global_step % cfg.eval_steps or not state.is_world_process_zero:
            return
        should_log = control.should_log
        was_training = model.training
        model.eval()
        try:
            metrics = self.rollout(model, state.global_step)
            self.trainer.log(metrics)  # in eval mode, so TRL merges none of its train-step metrics into these
        finally:
            model.train(was_training)
        control.should_log = should_log  # logging resets the flag; this step's loss is still to be logged

    def rollout(self, model, step: int) -> dict:
        """Episodes of the current weights (in eval mode) on the held-out samples; the metrics to log."""
        cfg = self.config
        return evaluate_weights(
            model, self.processor, self.dataset, Path(cfg.out) / EVAL_DIR / f"step-{step}", model_name=cfg.model,
            max_turns=self.max_turns, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
            max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, segmenter=cfg.eval_segmenter,
            seed=cfg.seed, step=step, command="sft")


def evaluate_weights(model, processor, dataset, out: Path, *, model_name: str, max_turns: int, min_pixels: int,
                     max_pixels: int, max_new_tokens: int, batch_size: int, segmenter: str, seed: int, step: int,
                     command: str, temperature: float = 0.0) -> dict:
    """Episodes of `model` as it is now on `dataset` through `rsagent.eval.run.evaluate` (the code
    `rsagent eval` runs), written to `out`; the metrics to log: eval_rollout_* when greedy (temperature 0),
    eval_sampled_* when sampled (seeded by `seed`)."""
    from rsagent.env.episode import EpisodeConfig
    from rsagent.eval.run import evaluate
    from rsagent.policies.qwen import QwenConfig, QwenPolicy
    from rsagent.segmenters import make_segmenter

    if out.exists():  # left by a run that stopped before its next checkpoint: this run redoes it
        shutil.rmtree(out)
    net = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers stay active

    def policy():
        return QwenPolicy(QwenConfig(model=model_name, device=str(net.device), min_pixels=min_pixels,
                                     max_pixels=max_pixels, max_new_tokens=max_new_tokens, seed=seed,
                                     temperature=temperature),
                          model=net, processor=processor)

    started = time.perf_counter()
    summary = evaluate(
        dataset, out, policy_factory=policy, segmenter_factory=partial(make_segmenter, segmenter),
        episode=EpisodeConfig(max_turns=max_turns), settings={"step": step, "model": model_name},
        batch_size=batch_size, progress=False, argv=["rsagent", "train", command, f"step={step}"], report=False)
    tools = summary.get("tools") or {}
    turns = int(tools.get("total_turns") or 0)
    # well-formed: one parseable call whose arguments fit its tool's schema; valid: also carried out
    well_formed = (turns - int(tools.get("malformed") or 0)) / turns if turns else 0.0
    valid = (turns - int(tools.get("invalid") or 0)) / turns if turns else 0.0
    prefix = "eval_sampled_" if temperature > 0 else "eval_rollout_"
    metrics = {"gIoU": summary["gIoU"], "cIoU": summary["cIoU"], "well_formed": well_formed, "valid": valid,
               "turns": turns / max(1, summary["n"]), "failed": summary["failed"],
               "seconds": time.perf_counter() - started}
    return {prefix + key: value for key, value in metrics.items()}


def _sharded(trainer) -> bool:
    """True when no single process holds the whole model (ZeRO-3 or FSDP)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", 0) == 3
