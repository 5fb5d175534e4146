"""`train_rl`: GRPO on whole episodes of the project's own environment, a small loop on accelerate.

Each step draws `prompts_per_step` prompts and plays `group_size` sampled episodes of each through the
real environment (the episode state machine, its parser, error observations, turn budget and frame),
all in lock-step (`runner.run_episodes`). The qwen policy records the ids it fed and sampled with their
log-probabilities (`policies.qwen_tokens`); the rewards (`train.rewards`) score each finished
trajectory against its ground truth; advantages are normalised within each group (`train.grpo`); the
loss is computed on the recorded ids, model tokens only, every turn's images in the forward.

    OUT/train_config.yaml        the resolved config (also in every checkpoint)
    OUT/log.jsonl                per step: reward components, final IoU, turns, tool counts, invalid-call
                                 rate, KL, clip fraction, entropy, ratio, lr, grad norm, tokens/s; held-out rollouts
    OUT/runs/                    TensorBoard events (the same numbers)
    OUT/gallery/step-N.html      every gallery_steps: whole groups of that step's episodes, turn by turn
    OUT/evals/step-N/            greedy rollouts on held-out data (`rsagent eval`'s files), every eval_steps
    OUT/checkpoint-N/            weights (or the LoRA adapter), processor, rl_state.pt (optimizer, scheduler, step)
                                 and rl_rank<R>.pt (each process's sampler and RNG); `resume` continues the newest
    OUT/ (config.json, model.safetensors, tokenizer, processor, rsagent_pixels.json)
                                 the final policy: `--policy qwen --model OUT` (LoRA merged; adapter in OUT/adapter/)
    OUT/final_weights.json       keep_best: the final policy is the saved step with the best held-out gIoU, not the last

Several processes (`accelerate launch`): each holds the whole model, plays its share of each step's
prompts (whole groups) and sums its gradients with the others before the optimiser step (no DDP
wrapper: the loss forward calls the model's parts). One process logs, evaluates and saves.

Why not TRL's GRPOTrainer: its `rollout_func` cannot carry observation images into the training
forward, and its `environment_factory` loop is not this project's episode (its own parser; an answer
without a tool call ends the episode). docs/training.md says more.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.train.callbacks import EVAL_DIR, LOG_FILE, evaluate_weights
from rsagent.train.config import CONFIG_FILE, replace, write_config
from rsagent.train.grpo import clipped_loss, group_advantages
from rsagent.train.rl_config import RL_RESUMABLE_CHANGES, RLConfig
from rsagent.train.rl_outputs import (ADAPTER_DIR, GALLERY_DIR, RunLog, choose_final_step, restore, save_checkpoint,
                                      save_weights, write_gallery)
from rsagent.train.run_dir import (
    CHECKPOINT_PREFIX,
    eval_dataset_spec,
    freeze_vision,
    prepare_out,
    resolve_precision,
    truncate_log,
)

RL_CURVES = (("reward", "reward (total)"), ("reward/final", "final"), ("reward/process", "process"),
             ("reward/format", "format"))  # reward/final is the final IoU


# --- prompts ----------------------------------------------------------------------------------------
def prompt_spec(config: RLConfig):
    """The prompts as a dataset: a file or folder is a manifest (synth's rl_prompts.jsonl is one);
    otherwise a dataset name `rsagent eval` knows, at prompts_root (shapes: its default folder)."""
    from rsagent.data import DATASETS
    from rsagent.eval.run import DatasetSpec

    path = Path(config.prompts).expanduser()
    if path.exists():
        return DatasetSpec.create("manifest", path, config.prompts_split)
    if config.prompts not in DATASETS:
        raise RsagentError(f"--prompts {config.prompts}: no such file, and not a dataset name "
                           f"({', '.join(DATASETS)})")
    root = config.prompts_root
    if root is None:
        if config.prompts != "shapes":
            raise RsagentError(f"--prompts {config.prompts} needs --prompts-root PATH")
        from rsagent.data.shapes import DEFAULT_ROOT

        root = str(DEFAULT_ROOT)
    return DatasetSpec.create(config.prompts, root, config.prompts_split)


def load_prompts(config: RLConfig) -> list:
    """The prompt samples, without those whose loader `kind` is in `exclude_kinds`; none left is an error."""
    prompts = prompt_spec(config).load()
    if config.exclude_kinds:  # e.g. shapes' "absent" queries (docs/training.md, "RL on shapes")
        prompts = [p for p in prompts if p.meta.get("kind") not in config.exclude_kinds]
    if not prompts:
        raise RsagentError(f"--prompts {config.prompts}: no samples"
                           + (f" after excluding kinds {config.exclude_kinds}" if config.exclude_kinds else ""))
    return prompts


def prompts_for_step(n_prompts: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of step `step`'s prompts (1-based steps): epochs of seeded permutations, read in order,
    so a resumed run draws what the uninterrupted one would have."""
    out = []
    for position in range((step - 1) * per_step, step * per_step):
        epoch, index = divmod(position, n_prompts)
        order = np.random.default_rng([seed, epoch]).permutation(n_prompts)
        out.append(int(order[index]))
    return out


# --- the loop ---------------------------------------------------------------------------------------
def train_rl(config: RLConfig) -> dict:
    """Run (or resume) the RL stage; returns steps done, the last step's mean reward, seconds, out."""
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler, set_seed

    from rsagent.policies.qwen import QwenConfig, QwenPolicy, load_processor, load_qwen_model, pixel_limits
    from rsagent.segmenters import make_segmenter

    started = time.perf_counter()
    config.check()
    prompts = load_prompts(config)  # a wrong path or a malformed line fails before any model is loaded
    bf16, dtype = resolve_precision(config.device, config.bf16, config.dtype)
    config = replace(config, bf16=bf16, dtype=dtype)
    out = Path(config.out)
    checkpoint = prepare_out(out, config, RL_RESUMABLE_CHANGES)
    eval_spec = eval_dataset_spec(config)
    min_pixels, max_pixels = pixel_limits(config.model)
    set_seed(config.seed)
    accelerator = Accelerator(cpu=config.device == "cpu", mixed_precision="bf16" if bf16 else "no")
    if config.prompts_per_step % accelerator.num_processes:
        raise RsagentError(f"prompts_per_step {config.prompts_per_step} must divide among "
                           f"{accelerator.num_processes} processes")
    processor = load_processor(config.model, min_pixels, max_pixels)
    model = _load_trainable(config, checkpoint, str(accelerator.device), getattr(torch, dtype))
    ref = load_qwen_model(config.model, str(accelerator.device), getattr(torch, dtype)) if config.kl_coef > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup if config.warmup >= 1 else math.ceil(config.warmup * config.max_steps))
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=warmup,
                              num_training_steps=config.max_steps)
    # Not wrapped for DDP: the loss forward calls the model's parts (only the generated tokens' logits are
    # projected), so several processes average their gradients themselves (`_sync_gradients`).
    unwrapped = model  # the model, or the peft wrapper with LoRA
    net = unwrapped.get_base_model() if config.lora else unwrapped  # LoRA layers stay in place
    rank = accelerator.process_index
    policy = QwenPolicy(QwenConfig(model=config.model, device=str(accelerator.device), min_pixels=min_pixels,
                                   max_pixels=max_pixels, temperature=config.temperature, top_p=config.top_p,
                                   max_new_tokens=config.max_new_tokens, seed=config.seed + rank, record=True),
                        model=net, processor=processor)
    start = 0
    if checkpoint is not None:
        start = restore(Path(checkpoint), optimizer, scheduler, policy, rank)
    main = accelerator.is_main_process
    if main:
        if checkpoint is not None:
            truncate_log(out / LOG_FILE, start)
        out.mkdir(parents=True, exist_ok=True)
        write_config(config, out / CONFIG_FILE)
    segmenter = make_segmenter(config.segmenter)
    log = RunLog(out) if main else None
    rewards_config = config.reward_config()

    def held_out(step: int) -> None:
        if not main:  # one process evaluates; the others wait for it
            accelerator.wait_for_everyone()
            return
        net.eval()
        passes = [("", 0.0)] + ([("-sampled", config.temperature)] if config.eval_sampled else [])
        metrics = {}
        for suffix, temperature in passes:
            metrics |= evaluate_weights(
                net, processor, eval_spec, out / EVAL_DIR / f"step-{step}{suffix}", model_name=config.model,
                max_turns=config.max_turns, min_pixels=min_pixels, max_pixels=max_pixels,
                max_new_tokens=config.eval_max_new_tokens, batch_size=config.eval_batch_size,
                segmenter=config.segmenter, seed=config.seed, step=step, command="rl", temperature=temperature)
        log.write(step, metrics)
        accelerator.wait_for_everyone()

    if eval_spec is not None and start == 0:
        held_out(0)  # the starting point of every curve
    from tqdm.auto import tqdm

    bar = tqdm(total=config.max_steps, initial=start, desc="rl", unit="step", disable=not (config.progress and main))
    row: dict = {}
    for step in range(start + 1, config.max_steps + 1):
        row = _step(config, step, prompts, policy, segmenter, model, net, ref, optimizer, scheduler, params,
                    accelerator, rewards_config, out)
        if main:
            log.write(step, row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", iou=f"{row['final_iou']:.3f}", turns=f"{row['turns']:.1f}")
        if eval_spec is not None and step % config.eval_steps == 0:
            held_out(step)
        if step % config.save_steps == 0 or step == config.max_steps:
            save_checkpoint(out, step, config, unwrapped, processor, optimizer, scheduler, policy, min_pixels,
                             max_pixels, accelerator)
    bar.close()
    accelerator.wait_for_everyone()
    final_step = config.max_steps
    if main:
        log.close()
        if config.keep_best:
            final_step, unwrapped = _best_weights(config, out, unwrapped, str(accelerator.device),
                                                  getattr(torch, dtype))
        save_weights(out, config, unwrapped, processor, min_pixels, max_pixels, merge=True)
        from rsagent.train.plot import plot_log

        plot_log(out / LOG_FILE, out / "log.png", title=f"rsagent train rl: {config.model}", curves=RL_CURVES,
                 log_scale=False, left_title="mean reward of the sampled episodes")
    return {"steps": config.max_steps, "final_step": final_step, "resumed_from": checkpoint,
            "reward": row.get("reward"), "final_iou": row.get("final_iou"), "out": str(out), "prompts": len(prompts),
            "seconds": time.perf_counter() - started}


def _step(config: RLConfig, step: int, prompts, policy, segmenter, model, net, ref, optimizer, scheduler, params,
          accelerator, rewards_config, out: Path) -> dict:
    """One GRPO step: rollouts, rewards, advantages, the update; returns its log row."""
    import torch

    from rsagent.env.episode import EpisodeConfig, EpisodeTask
    from rsagent.policies.qwen_tokens import score_episodes
    from rsagent.runner import run_episodes
    from rsagent.train.rewards import score_trajectory

    t0 = time.perf_counter()
    world, rank = accelerator.num_processes, accelerator.process_index
    drawn = prompts_for_step(len(prompts), step, config.prompts_per_step, config.seed)
    chosen = [prompts[i] for i in drawn[rank::world]]  # each process plays its share of whole groups
    loaded = [sample.load() for sample in chosen]
    tasks, gts = [], {}
    for g, (sample, (image, gt)) in enumerate(zip(chosen, loaded)):
        for k in range(config.group_size):
            sid = f"{g:03d}~{k:02d}~{sample.sample_id}"  # unique per episode, ordered group by group
            tasks.append(EpisodeTask(image, sample.query, sid, gt, str(sample.image_path)))
            gts[sid] = gt
    records = {}
    net.eval()
    with torch.no_grad():
        trajs = run_episodes(policy, segmenter, tasks, EpisodeConfig(max_turns=config.max_turns),
                             batch_size=config.rollout_batch_size, progress=False,
                             on_episode=lambda ep: records.__setitem__(ep.task.sample_id, policy.episode_tokens(ep)))
    t_rollout = time.perf_counter() - t0
    scores = [score_trajectory(traj, gts[traj.sample_id], rewards_config) for traj in trajs]
    advantages, skipped = group_advantages([s.score for s in scores], config.group_size, config.scale_advantages)
    train = [(records[t.sample_id], a) for t, a in zip(trajs, advantages)
             if a != 0 and records.get(t.sample_id) is not None and records[t.sample_id].n_generated]
    n_tokens = _global_sum(sum(rec.n_generated for rec, _ in train), accelerator)  # token-level: over all processes
    t1 = time.perf_counter()
    totals = Counter()
    grad_norm = 0.0
    micros = [train[i:i + config.micro_batch] for i in range(0, len(train), config.micro_batch)]
    ref_lps = [None] * len(micros)
    if ref is not None and n_tokens:  # the reference does not change: once per step, whatever the passes
        with torch.no_grad(), accelerator.autocast():
            ref_lps = [torch.cat([s.logprobs for s in score_episodes(ref, [rec for rec, _ in micro],
                                                                        policy.banned_ids, policy.pad_id)])
                       for micro in micros]
    model.train()
    for _ in range(config.updates_per_step if n_tokens else 0):
        optimizer.zero_grad(set_to_none=True)
        for micro, ref_lp in zip(micros, ref_lps):
            with accelerator.autocast():
                scored = score_episodes(net, [rec for rec, _ in micro], policy.banned_ids, policy.pad_id)
            logprobs = torch.cat([s.logprobs for s in scored])
            adv = torch.cat([torch.full_like(s.logprobs, a) for s, (_, a) in zip(scored, micro)]).detach()
            parts = clipped_loss(logprobs, torch.cat([s.old_logprobs for s in scored]), adv, config.clip_low,
                                 config.clip_high, ref_lp, config.kl_coef)
            (parts.loss / n_tokens).backward()
            totals.update(loss=float(parts.loss.detach()), clipped=parts.clipped, ratio=parts.ratio_sum,
                          kl=parts.kl_sum, tokens=parts.tokens,
                          entropy=float(sum(s.entropy.sum() for s in scored)))
            totals["ratio_max"] = max(totals["ratio_max"], parts.ratio_max)
        _sync_gradients(params, accelerator)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
    lr = scheduler.get_last_lr()[0]
    with warnings.catch_warnings():
        # a step whose groups were all flat updates nothing, yet the schedule follows the step count, so
        # that a resumed run and an uninterrupted one keep the same learning rate at every step
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()
    t_update = time.perf_counter() - t1
    row = _rollout_stats(trajs, scores, skipped)
    seen = max(1, totals["tokens"])
    row.update({
        "loss": totals["loss"] / seen if train else 0.0, "clip_fraction": totals["clipped"] / seen,
        "ratio_mean": totals["ratio"] / seen if train else 1.0, "ratio_max": totals["ratio_max"] if train else 1.0,
        "kl": totals["kl"] / seen, "entropy": totals["entropy"] / seen if train else None,
        "grad_norm": grad_norm, "learning_rate": lr, "episodes_trained": len(train), "tokens_trained": n_tokens,
        "generated_tokens": sum(r.n_generated for r in records.values() if r is not None),
        "seconds_rollout": t_rollout, "seconds_update": t_update,
        "tokens_per_second": (n_tokens * config.updates_per_step) / max(t_update, 1e-9) if train else None})
    row = _merged(row, len(trajs), accelerator)
    if config.gallery_steps and step % config.gallery_steps == 0 and accelerator.is_main_process:
        write_gallery(out / GALLERY_DIR / f"step-{step}.html", step, trajs, scores, advantages, loaded,
                       config.group_size, config.gallery_groups)
    return row


SUMMED = ("groups_skipped", "groups", "failed", "episodes_trained", "generated_tokens")


def _merged(row: dict, episodes: int, accelerator) -> dict:
    """The step's row over all processes: counts summed, everything else averaged by episodes (the
    update's numbers are the same everywhere after the gradient sum; averaging keeps them)."""
    if accelerator.num_processes == 1:
        return row
    import torch

    rows: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(rows, (row, episodes))
    total = sum(n for _, n in rows)
    keys = sorted({k for r, _ in rows for k in r})
    merged = {}
    for key in keys:
        absent = 0.0 if key.startswith("tools/") else None  # a tool no episode of a process called: 0 calls
        values = [(r.get(key, absent), n) for r, n in rows if r.get(key, absent) is not None]
        if key in SUMMED:
            merged[key] = sum(v for v, _ in values)
        elif values:
            merged[key] = sum(v * n for v, n in values) / max(1, sum(n for _, n in values))
        else:
            merged[key] = None
    merged["processes"] = accelerator.num_processes
    merged["episodes"] = total
    return merged


def _global_sum(value: int, accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    import torch

    total = torch.tensor([value], device=accelerator.device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def _sync_gradients(params, accelerator) -> None:
    """Sum the processes' gradients (each loss is already divided by the step's global token count)."""
    if accelerator.num_processes == 1:
        return
    import torch

    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        torch.distributed.all_reduce(param.grad)


def _rollout_stats(trajs, scores, skipped: list[bool]) -> dict:
    """Means over the step's episodes: every reward component, final IoU, turns, tools, invalid calls."""
    n = len(trajs)
    keys = sorted({k for s in scores for k in s.breakdown})
    row = {"reward": float(np.mean([s.score for s in scores]))}
    row.update({f"reward/{k}": float(np.mean([s.breakdown.get(k, 0.0) for s in scores])) for k in keys
                if k != "total"})
    turns = [t for traj in trajs for t in traj.turns]
    calls = Counter(t.tool_call["name"] for t in turns if t.tool_call is not None and t.error is None)
    row.update({
        "final_iou": float(np.mean([traj.metrics.get("iou", 0.0) for traj in trajs])),
        "reward_std": float(np.std([s.score for s in scores])),
        "turns": len(turns) / n, "invalid_rate": sum(t.error is not None for t in turns) / max(1, len(turns)),
        "malformed_rate": sum(t.error_kind in ("format", "arguments") for t in turns) / max(1, len(turns)),
        "submitted": sum(traj.final.get("reason") == "submit" for traj in trajs) / n,
        "failed": sum(traj.final.get("reason") == "failed" for traj in trajs),
        "groups_skipped": sum(skipped), "groups": len(skipped)})
    row.update({f"tools/{name}": count / n for name, count in sorted(calls.items())})
    return row


# --- the starting weights -----------------------------------------------------------------------
def _best_weights(config: RLConfig, out: Path, unwrapped, device: str, dtype):
    """keep_best: (the step whose weights are final, the model holding them)."""
    step = choose_final_step(out, config.max_steps)
    if step == config.max_steps:
        return step, unwrapped
    return step, _load_trainable(config, str(out / f"{CHECKPOINT_PREFIX}{step}"), device, dtype)


def _load_trainable(config: RLConfig, checkpoint: str | None, device: str, dtype):
    """The policy's weights: the starting model (a checkpoint's when resuming full fine-tuning), LoRA wrapped."""
    from rsagent.policies.qwen import load_qwen_model

    full_resume = checkpoint is not None and not config.lora
    model = load_qwen_model(checkpoint if full_resume else config.model, device, dtype)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze_vision(model, config.freeze_vision)
    if config.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if checkpoint is not None:
            return PeftModel.from_pretrained(model, str(Path(checkpoint) / ADAPTER_DIR), is_trainable=True)
        names = "|".join(config.lora_target_modules)
        return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
                                                target_modules=rf".*\.language_model\..*\.({names})"))
    return model


__all__ = ["RLConfig", "load_prompts", "prompt_spec", "prompts_for_step", "train_rl"]
