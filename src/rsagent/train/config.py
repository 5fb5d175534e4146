"""Every setting of a training run as one typed dataclass (SFTConfig here, RLConfig in rl_config),
loadable from YAML, with CLI overrides.

The resolved config (after `resolve`: "auto" values decided, pixel limits read from the export)
is what `OUT/train_config.yaml` and every checkpoint hold, so a run can be read back and resumed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rsagent.core.errors import RsagentError

LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
CONFIG_FILE = "train_config.yaml"

# May change when a run is resumed: how long it goes on, where it runs, what and how often it logs,
# saves and evaluates. Everything else shapes the weights and must match the run being resumed.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "epochs", "resume", "device", "logging_steps", "save_steps", "save_total_limit",
    "dataloader_workers", "eval_steps", "eval_dataset", "eval_root", "eval_split", "eval_n", "eval_max_turns",
    "eval_segmenter", "eval_max_new_tokens", "eval_batch_size"})


@dataclass
class SFTConfig:
    # what to train on, from what, to where
    data: str | None = None  # a `rsagent synth` output folder (sft.jsonl + images/ + run.json)
    model: str | None = None  # hub id or local folder of a Qwen2.5-VL checkpoint
    out: str | None = None  # checkpoints, logs, evals and the final model
    # length
    max_steps: int = -1  # > 0: stop after this many optimizer steps (overrides epochs)
    epochs: float = 1.0
    # batch and optimizer
    per_device_batch: int = 1
    grad_accum: int = 1
    lr: float = 1e-5
    scheduler: str = "cosine"
    warmup: float = 0.03  # < 1: a fraction of the steps; >= 1: a number of steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # what is trained
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_PROJECTIONS))  # language model only
    # true: model.model.visual (patch embedding, blocks, merger) keeps its weights; blocks: all but the merger
    freeze_vision: bool | str = False
    # memory and precision
    gradient_checkpointing: bool = True
    bf16: bool | str = "auto"  # "auto": on when CUDA supports bf16
    dtype: str = "auto"  # weights as loaded: "auto" = bfloat16 when bf16 is on, else float32
    device: str | None = None  # "cpu" forces the CPU; None: CUDA when available (accelerate picks the rank's GPU)
    dataloader_workers: int = 0
    # pixels per image: None = the frame the export was synthesized with (run.json)
    min_pixels: int | None = None
    max_pixels: int | None = None
    # logging and checkpoints
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool = False  # continue from the newest OUT/checkpoint-*
    # rollouts of the current model on held-out data, every eval_steps (0: never)
    eval_steps: int = 0
    eval_dataset: str | None = None  # any dataset `rsagent eval` knows (e.g. shapes)
    eval_root: str | None = None
    eval_split: str | None = None
    eval_n: int = 32  # the first N samples
    eval_max_turns: int | None = None  # None: the export's turn budget (the system prompt states it)
    eval_segmenter: str = "grabcut"
    eval_max_new_tokens: int = 512
    eval_batch_size: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Values a run cannot start with, as one clear error."""
        for name in ("data", "model", "out"):
            if not getattr(self, name):
                raise RsagentError(f"train sft needs --{name} (or `{name}:` in the --config file)")
        positive = ("per_device_batch", "grad_accum", "logging_steps", "save_steps", "lora_r", "eval_n",
                    "eval_max_new_tokens", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise RsagentError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise RsagentError("give max_steps > 0 or epochs > 0")
        if self.lr <= 0 or self.warmup < 0 or self.eval_steps < 0:
            raise RsagentError("lr must be positive, warmup and eval_steps non-negative")
        if self.scheduler not in SCHEDULERS:
            raise RsagentError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.bf16 not in (True, False, "auto"):
            raise RsagentError(f"bf16 must be true, false or auto, got {self.bf16!r}")
        check_freeze_vision(self.freeze_vision)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise RsagentError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.eval_steps and not self.eval_dataset:
            raise RsagentError("eval_steps > 0 needs eval_dataset (e.g. --eval-dataset shapes)")
        if self.eval_max_turns is not None and self.eval_max_turns < 1:
            raise RsagentError(f"eval_max_turns must be at least 1, got {self.eval_max_turns}")


def check_freeze_vision(value) -> None:
    """freeze_vision is true (the whole vision tower), false, or "blocks" (all of it but the merger)."""
    if value not in (False, True, "blocks"):
        raise RsagentError(f"freeze_vision must be true, false or blocks, got {value!r}")


def _check_type(name: str, value, hint) -> None:
    """YAML values against the field's annotation (int where int, list of str where list[str], ...)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if any(_fits(value, h) for h in typing.get_args(hint)):
            return
    elif _fits(value, hint):
        return
    raise RsagentError(f"config key {name!r}: {value!r} is not a {getattr(hint, '__name__', hint)}")


def _fits(value, hint) -> bool:
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    return isinstance(value, hint)


def load_sft_config(path: str | Path | None = None, **overrides) -> SFTConfig:
    return load_config(SFTConfig, path, **overrides)


def load_config(cls, path: str | Path | None = None, paths: tuple[str, ...] = ("data", "out", "eval_root"),
                **overrides):
    """The file's settings (YAML mapping of `cls` fields), then `overrides` (None values ignored:
    a CLI flag that was not given). Unknown keys are an error, never ignored. `paths` get ~ expanded."""
    values: dict = {}
    if path is not None:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise RsagentError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RsagentError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise RsagentError(f"--config {path}: expected a mapping of settings, got {type(loaded).__name__}")
        values.update(loaded or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RsagentError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        _check_type(name, value, hints[name])
    for name in paths:  # ~ expanded; relative paths stay relative to where it runs
        if isinstance(values.get(name), str):
            values[name] = str(Path(values[name]).expanduser())
    config = cls(**values)
    config.check()
    return config


def write_config(config, path: str | Path) -> None:
    import yaml

    from rsagent.core.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config(path: str | Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def resume_differences(stored: dict, config, resumable: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """Settings that differ from the run being resumed and may not (`resumable` ones may). `out` always may:
    the folder being resumed is the run, wherever it was first written (a moved or copied run resumes)."""
    now = config.to_dict()
    return [f"{k}: {stored.get(k, '(unset)')!r} then, {now.get(k, '(unset)')!r} now"
            for k in sorted(set(stored) | set(now)) if k not in resumable | {"out"} and stored.get(k) != now.get(k)]


def replace(config, **changes):
    return dataclasses.replace(config, **changes)
