"""What every training run shares: its output folder and resuming it, which weights train, precision, the
held-out set."""

from __future__ import annotations

import json
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.train.config import CONFIG_FILE, RESUMABLE_CHANGES, check_freeze_vision, read_config, resume_differences

CHECKPOINT_PREFIX = "checkpoint-"


def freeze_vision(model, what: bool | str) -> None:
    """Keep the vision tower's weights: True the whole tower, "blocks" its patch embedding and blocks only.

    "blocks" lets the merger (the projector into the language model) train, as LLaVA's first stage does: a
    language model trained from random weights sends the tower noisy gradients that wash out what perception
    pretraining taught it (docs/shapes.md, 2026-11-27 (g): grounding learns about twice as fast).
    """
    check_freeze_vision(what)
    if what is False:
        return
    for name, param in model.model.visual.named_parameters():
        if what is True or not name.startswith("merger."):
            param.requires_grad_(False)


def prepare_out(out: Path, config, resumable: frozenset[str] = RESUMABLE_CHANGES) -> str | None:
    """Check OUT against `config.resume`; returns the checkpoint to continue from (None: a fresh run)."""
    from transformers.trainer_utils import get_last_checkpoint

    stored_path = out / CONFIG_FILE
    used = out.is_dir() and any(out.iterdir())
    if not config.resume:
        if used:
            what = "a training run" if stored_path.is_file() else "files"
            raise RsagentError(f"{out} already holds {what}: pass --resume to continue it, or choose another --out")
        return None
    if not stored_path.is_file():
        raise RsagentError(f"--resume: {out} holds no training run ({CONFIG_FILE} is missing)")
    diff = resume_differences(read_config(stored_path), config, resumable)
    if diff:
        raise RsagentError(f"--resume: {out} holds a run with other settings (" + "; ".join(diff[:6])
                           + "); resume with the same settings or choose another --out")
    checkpoint = get_last_checkpoint(str(out))
    if checkpoint is None:
        raise RsagentError(f"--resume: {out} has no {CHECKPOINT_PREFIX}* yet; start again in a new --out")
    return checkpoint


def checkpoint_step(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


def checkpoint_folders(out: Path) -> list[Path]:
    """OUT/checkpoint-N folders, oldest step first."""
    return sorted((p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), key=checkpoint_step)


def publish_checkpoint(out: Path, tmp: Path, step: int, keep: int | None, protect: int | None = None) -> None:
    """Rename the finished `tmp` folder to OUT/checkpoint-<step> (a checkpoint folder is complete or absent),
    then drop the oldest beyond `keep` (None: keep all), never checkpoint-<protect> (the best so far)."""
    import shutil

    folder = out / f"{CHECKPOINT_PREFIX}{step}"
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    if keep:
        done = [p for p in checkpoint_folders(out) if checkpoint_step(p) != protect]
        for old in done[:-keep]:
            shutil.rmtree(old)


def truncate_log(path: Path, step: int) -> None:
    """Logs past the checkpoint belong to steps the resumed run does again: keep one line per step."""
    if not path.is_file():
        return
    from rsagent.core.files import atomic_write_text

    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def resolve_precision(device: str | None, bf16: bool | str, dtype: str) -> tuple[bool, str]:
    """(bf16, dtype) with "auto" decided: bf16 where CUDA supports it; weights in bfloat16 then."""
    import torch

    from rsagent.core.device import resolve_device

    cuda = resolve_device(device) == "cuda"
    on = (cuda and torch.cuda.is_bf16_supported()) if bf16 == "auto" else bool(bf16)
    return on, (("bfloat16" if on else "float32") if dtype == "auto" else dtype)


def eval_dataset_spec(config):
    """The held-out dataset of the rollouts (config.eval_dataset/root/split/n), listed once now so a wrong
    path fails before training; None when config.eval_steps is 0."""
    if not config.eval_steps:
        return None
    from rsagent.eval.run import DatasetSpec

    root = config.eval_root
    if root is None:
        if config.eval_dataset != "shapes":
            raise RsagentError(f"eval_dataset {config.eval_dataset} needs eval_root (--eval-root PATH)")
        from rsagent.data.shapes import DEFAULT_ROOT

        root = str(DEFAULT_ROOT)
    spec = DatasetSpec.create(config.eval_dataset, root, config.eval_split, limit=config.eval_n)
    if not spec.load():
        raise RsagentError(f"eval dataset {config.eval_dataset} at {root} has no samples")
    return spec
