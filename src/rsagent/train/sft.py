"""`train_sft`: cold-start SFT of the qwen policy on a synthesis export, on TRL's SFTTrainer.

    OUT/train_config.yaml        the resolved config (also in every checkpoint)
    OUT/log.jsonl                every log: loss, learning_rate, grad_norm, tokens/s, epoch, step, rollout metrics
    OUT/runs/                    TensorBoard events
    OUT/checkpoint-N/            weights, optimizer, scheduler, RNG and trainer state; `resume` continues the newest
    OUT/evals/step-N/            rollouts on held-out data (`rsagent eval`'s files)
    OUT/ (config.json, model.safetensors, tokenizer, processor_config.json, chat_template.jinja)
                                 the final model: loads with `--policy qwen --model OUT` (LoRA merged into the base;
                                 the adapter alone in OUT/adapter/)

The rows are tokenised by the processor with the project's chat template, the same renderer the qwen
policy uses, so training sees exactly the ids and pixels inference does (tests/test_train_sft.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from rsagent.train.callbacks import EVAL_DIR, LOG_FILE, ConfigInCheckpoint, JSONLLogger, RolloutEval
from rsagent.train.config import CONFIG_FILE, SFTConfig, replace, write_config
from rsagent.train.run_dir import eval_dataset_spec, freeze_vision, prepare_out, resolve_precision, truncate_log
from rsagent.train.sft_data import (
    SFTCollator,
    check_pixels,
    export_frame,
    export_max_turns,
    load_rows,
    pixel_limits,
    sft_dataset,
)

ADAPTER_DIR = "adapter"


def train_sft(config: SFTConfig) -> dict:
    """Train on `config.data`, write `config.out`; returns steps, final loss, seconds and what was resumed."""
    import torch
    from transformers import set_seed

    from rsagent.policies.qwen import load_processor, load_qwen_model

    started = time.perf_counter()
    config.check()
    rows = load_rows(config.data)  # every refusal about the data comes before any model is loaded
    min_pixels, max_pixels = pixel_limits(export_frame(config.data), config.min_pixels, config.max_pixels)
    check_pixels(rows, config.data, min_pixels, max_pixels)
    config = _resolved(config, min_pixels, max_pixels)
    out = Path(config.out)
    checkpoint = prepare_out(out, config)
    eval_dataset = eval_dataset_spec(config)
    set_seed(config.seed)
    args = _training_args(config)  # before the model: under ZeRO-3 from_pretrained then partitions as it loads
    processor = load_processor(config.model, min_pixels, max_pixels)
    model = load_qwen_model(config.model, str(args.device), getattr(torch, config.dtype))
    model.config.use_cache = False  # training; the rollout policy passes use_cache itself
    freeze_vision(model, config.freeze_vision)
    if args.process_index == 0:
        write_config(config, out / CONFIG_FILE)
        if checkpoint is not None:
            truncate_log(out / LOG_FILE, int(Path(checkpoint).name.split("-")[-1]))
    callbacks = [JSONLLogger(out), ConfigInCheckpoint(config)]
    rollout = None
    if eval_dataset is not None:
        rollout = RolloutEval(config, eval_dataset, processor, config.eval_max_turns, min_pixels, max_pixels)
        callbacks.append(rollout)
    trainer = _trainer_class()(model=model, args=args, train_dataset=sft_dataset(rows), processing_class=processor,
                               data_collator=SFTCollator(processor, config.data), peft_config=_lora(config),
                               callbacks=callbacks)
    if rollout is not None:
        rollout.bind(trainer)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    _save_final(trainer, config, processor)
    if args.process_index == 0:
        from rsagent.train.plot import plot_log

        plot_log(out / LOG_FILE, out / "log.png", title=f"rsagent train sft: {config.model} on {config.data}")
    return {"steps": trainer.state.global_step, "train_loss": result.training_loss, "out": str(out),
            "resumed_from": checkpoint, "rows": len(rows), "seconds": time.perf_counter() - started}


def _trainer_class():
    """TRL's SFTTrainer, resuming full weights through the model's own loader.

    transformers 5 writes a checkpoint's weights under the hub's key names (`save_pretrained`'s
    `save_original_format`) but `Trainer._load_from_checkpoint` reads them back with a plain
    `load_state_dict`, which matches none of Qwen2.5-VL's runtime names: a resumed run would go on from
    the base weights with only a warning. `load_qwen_model` converts the names; a mismatch is an error.
    LoRA adapters (peft's own format), DeepSpeed and FSDP checkpoints take the trainer's usual path.
    """
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            import torch

            from rsagent.core.weights import WEIGHT_FILES
            from rsagent.policies.qwen import load_qwen_model

            model = model if model is not None else self.model
            folder = Path(resume_from_checkpoint)
            if hasattr(model, "peft_config") or not any((folder / n).is_file() for n in WEIGHT_FILES):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            saved = load_qwen_model(str(folder), "cpu", next(model.parameters()).dtype)
            with torch.no_grad():
                model.load_state_dict(saved.state_dict(), strict=True)

    return Trainer


def _resolved(config: SFTConfig, min_pixels: int, max_pixels: int) -> SFTConfig:
    """Decide every "auto" so the written config says what actually ran."""
    bf16, dtype = resolve_precision(config.device, config.bf16, config.dtype)
    max_turns = config.eval_max_turns or export_max_turns(config.data) or 8
    return replace(config, bf16=bf16, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
                   eval_max_turns=max_turns)


def _training_args(config: SFTConfig):
    from trl import SFTConfig as TRLConfig

    return TRLConfig(
        output_dir=config.out, max_steps=config.max_steps, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.per_device_batch, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, lr_scheduler_type=config.scheduler, warmup_steps=config.warmup,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, seed=config.seed, data_seed=config.seed,
        bf16=bool(config.bf16), fp16=False, use_cpu=config.device == "cpu",
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps, logging_first_step=True, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=config.save_total_limit, report_to=["tensorboard"],
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=config.dataloader_workers,
        # the rows are conversations with image paths: TRL's collator-side tokenisation, no truncation
        assistant_only_loss=True, max_length=None, dataset_kwargs={"skip_prepare_dataset": True},
        eval_strategy="no")


def _lora(config: SFTConfig):
    """LoRA on the language model's projections only (the vision tower has same-named layers)."""
    if not config.lora:
        return None
    from peft import LoraConfig

    names = "|".join(config.lora_target_modules)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=rf".*\.language_model\..*\.({names})", task_type="CAUSAL_LM")


def _save_final(trainer, config: SFTConfig, processor) -> None:
    """OUT/ holds full weights and the processor; with LoRA, OUT/adapter/ the adapter and OUT/ the merge."""
    import torch

    from rsagent.policies.qwen import load_qwen_model, save_pixel_limits

    out = Path(config.out)
    if not config.lora:
        trainer.save_model(str(out))  # gathers ZeRO-3 shards; writes the processor too
    else:
        trainer.save_model(str(out / ADAPTER_DIR))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():  # merge on one process, from the base weights on the CPU
            from peft import PeftModel
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            # training is over: a ZeRO-3 run must not partition this one-process load (it would wait for the others)
            unset_hf_deepspeed_config()
            base = load_qwen_model(config.model, "cpu", getattr(torch, config.dtype))
            merged = PeftModel.from_pretrained(base, str(out / ADAPTER_DIR)).merge_and_unload()
            merged.save_pretrained(str(out))
            processor.save_pretrained(str(out))
    if trainer.is_world_process_zero():
        write_config(config, out / CONFIG_FILE)
        save_pixel_limits(out, config.min_pixels, config.max_pixels)  # `--policy qwen --model OUT` shows views as trained
    trainer.accelerator.wait_for_everyone()


__all__ = ["ADAPTER_DIR", "EVAL_DIR", "train_sft"]
