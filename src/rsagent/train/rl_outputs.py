"""What an RL run writes: checkpoints (and reading them back), the log, the rollout gallery."""

from __future__ import annotations

import json
import math
import shutil
from html import escape
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.train.callbacks import LOG_FILE
from rsagent.train.config import CONFIG_FILE, write_config
from rsagent.train.rl_config import RLConfig
from rsagent.train.run_dir import CHECKPOINT_PREFIX, checkpoint_folders, checkpoint_step, publish_checkpoint

STATE_FILE = "rl_state.pt"  # optimizer, scheduler, step
RANK_FILE = "rl_rank{rank}.pt"  # each process's sampler and RNG state
GALLERY_DIR = "gallery"
ADAPTER_DIR = "adapter"
FINAL_FILE = "final_weights.json"  # with keep_best: which checkpoint the final weights are, and why
BEST_METRIC = "eval_rollout_gIoU"


def save_weights(folder: Path, config: RLConfig, unwrapped, processor, min_pixels: int, max_pixels: int,
                  merge: bool) -> None:
    """Weights (LoRA: the adapter in folder/adapter/, and with `merge` the merged model too), the processor,
    the pixel limits and the config: a folder `--policy qwen --model` loads."""
    from rsagent.policies.qwen import save_pixel_limits

    folder.mkdir(parents=True, exist_ok=True)
    if config.lora:
        unwrapped.save_pretrained(str(folder / ADAPTER_DIR))
        if merge:
            import copy

            copy.deepcopy(unwrapped).merge_and_unload().save_pretrained(str(folder))
    else:
        unwrapped.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    save_pixel_limits(folder, min_pixels, max_pixels)
    write_config(config, folder / CONFIG_FILE)


def save_checkpoint(out: Path, step: int, config: RLConfig, unwrapped, processor, optimizer, scheduler, policy,
                     min_pixels: int, max_pixels: int, accelerator) -> None:
    """OUT/checkpoint-N, written whole into a temporary folder then renamed; each process adds its sampler."""
    import torch

    tmp = out / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        save_weights(tmp, config, unwrapped, processor, min_pixels, max_pixels, merge=False)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   tmp / STATE_FILE)
    accelerator.wait_for_everyone()
    torch.save({"sampler": policy.sampler_state, "torch_rng": torch.get_rng_state()},
               tmp / RANK_FILE.format(rank=accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        best = best_checkpoint(out, saved_steps(out) | {step}) if config.keep_best else None
        publish_checkpoint(out, tmp, step, config.save_total_limit, protect=best and best[0])


def saved_steps(out: Path) -> set[int]:
    return {checkpoint_step(p) for p in checkpoint_folders(out)}


def best_checkpoint(out: Path, steps: set[int]) -> tuple[int, dict[int, float]] | None:
    """(the step among `steps` whose held-out greedy gIoU in OUT/log.jsonl is highest, the later on a tie;
    every candidate's gIoU), or None when none of them was evaluated."""
    scores: dict[int, float] = {}
    path = out / LOG_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("step") in steps and row.get(BEST_METRIC) is not None:
                scores[row["step"]] = float(row[BEST_METRIC])
    if not scores:
        return None
    return max(scores, key=lambda s: (scores[s], s)), scores


def choose_final_step(out: Path, max_steps: int) -> int:
    """keep_best: the best saved checkpoint's step (max_steps when none was evaluated), recorded in
    OUT/final_weights.json with every candidate's gIoU."""
    from rsagent.core.files import atomic_write_text

    best = best_checkpoint(out, saved_steps(out))
    step = max_steps if best is None else best[0]
    atomic_write_text(out / FINAL_FILE, json.dumps({
        "step": step, "max_steps": max_steps, "chosen_by": f"keep_best: the highest {BEST_METRIC}",
        "candidates": {} if best is None else {str(k): v for k, v in sorted(best[1].items())}}, indent=1) + "\n")
    return step


def restore(checkpoint: Path, optimizer, scheduler, policy, rank: int) -> int:
    import torch

    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    mine = checkpoint / RANK_FILE.format(rank=rank)
    if not mine.is_file():
        raise RsagentError(f"--resume: {checkpoint} has no {mine.name}: resume with as many processes as the run had")
    own = torch.load(mine, weights_only=False)
    policy.sampler_state = own["sampler"]
    torch.set_rng_state(own["torch_rng"])
    return int(state["step"])


class RunLog:
    """Each row to OUT/log.jsonl and to TensorBoard (OUT/runs/)."""

    def __init__(self, out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / LOG_FILE
        self.board = SummaryWriter(str(out / "runs"))

    def write(self, step: int, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        for key, value in clean.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                self.board.add_scalar(key if key.startswith("eval_") else f"train/{key}", value, step)
        self.board.flush()

    def close(self) -> None:
        self.board.close()


def write_gallery(path: Path, step: int, trajs, scores, advantages, loaded, group_size: int, groups: int) -> None:
    """The first `groups` prompts of the step, each with its whole group: rewards, advantage, every turn."""
    from rsagent.eval.report import fmt
    from rsagent.core.files import atomic_write_text
    from rsagent.synth.stats import page_head, trajectory_section

    parts = [page_head(f"rsagent rl step {step}"), f"<h1>RL step {step}: sampled episodes</h1>",
             "<p class='muted'>Each prompt's whole group; the advantage is the reward against the group's.</p>"]
    for g in range(min(groups, len(loaded))):
        image = loaded[g][0]
        parts.append(f"<h2>Prompt {g + 1}: {escape(trajs[g * group_size].query)}</h2>")
        for k in range(group_size):
            i = g * group_size + k
            facts = [("episode", escape(trajs[i].sample_id)), ("reward", fmt(scores[i].score)),
                     ("advantage", fmt(advantages[i])), ("final IoU", fmt(trajs[i].metrics.get("iou"))),
                     ("turns", str(len(trajs[i].turns))), ("end", escape(str(trajs[i].final.get("reason")))),
                     *[(k2, fmt(v)) for k2, v in scores[i].breakdown.items() if k2 != "total"]]
            parts.append(trajectory_section(trajs[i], image, facts))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
