"""A CPU-sized Qwen2.5-VL for the shapes domain: the real architecture, a tokenizer trained on the domain's text.

    rsagent shapes model --out DIR [--seed 0]       (random initialisation; loads with --policy qwen --model DIR)

The tokenizer is a byte-level BPE (every byte is in the alphabet, so any text encodes) trained on what
an episode on shapes contains: the system prompt with the tools, user turns, queries, the oracle's
reasoning and calls, and the observations. Integers 0..399 are single tokens (coordinates in one
token each), and Qwen2.5-VL's 22 added tokens keep their names, in Qwen's order, right after the
learned vocabulary; the config's image/vision token ids point at them.

Choices for CPU training (docs/shapes.md has the measurements): scenes of 112 px are shown as 8x8
patches of 14 px, merged 2x2 into 16 visual tokens; Qwen's own text rope_theta (1e6), so that most of a
32-wide head does not rotate and attention can match content across a whole episode. Where a visual
token sits reaches the text through the token itself: the vision tower's perception pretraining
(`shapes_vision`) teaches each token its row and column.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from rsagent.core.errors import RsagentError

VOCAB_SIZE = 2048  # learned tokens (bytes + merges), before Qwen2.5-VL's added tokens
NUMBERS = 400  # 0..NUMBERS-1 are single tokens
# Qwen2's pre-tokenizer with whole numbers of up to 3 digits (Qwen splits digits one by one)
_PRETOKEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SCENE_SIZE = 112
MAX_PIXELS = SCENE_SIZE * SCENE_SIZE  # 64 patches: views are shown at 112x112 at most
VISION_CHECKPOINT = "vision-checkpoint"  # OUT/ of an interrupted vision pretraining (`--resume`)


def corpus(n_samples: int = 300, n_episodes: int = 40, seed: int = 0) -> list[str]:
    """Domain text: prompts, queries, oracle answers and observations on `train` scenes."""
    import numpy as np

    from rsagent.core.frames import SmartResizeFrame
    from rsagent.data.shapes.generate import generate
    from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
    from rsagent.core.mask import GroundTruth
    from rsagent.policies.oracle import OracleConfig, OraclePolicy
    from rsagent.runner import run_episodes
    from rsagent.segmenters import make_segmenter

    frame = SmartResizeFrame(max_pixels=MAX_PIXELS)
    texts: list[str] = ["You are a helpful assistant."]
    tasks = []
    for i in range(n_samples):
        s = generate("train", 10_000_000 + seed * 100_000 + i)
        ep = Episode(EpisodeTask(s.scene.image, s.query, s.sample_id, GroundTruth(s.mask)), _NullSegmenter(),
                     EpisodeConfig(max_turns=(2, 4, 8)[i % 3]), frame)
        texts += [ep.system_prompt, ep.user_text, s.query]
        if i < n_episodes:
            tasks.append(EpisodeTask(s.scene.image, s.query, s.sample_id, GroundTruth(s.mask)))
    policy = OraclePolicy(OracleConfig(seed=seed))
    policy.frame = frame
    trajs = run_episodes(policy, make_segmenter("grabcut"), tasks, EpisodeConfig(max_turns=8), progress=False)
    for traj in trajs:
        for turn in traj.turns:
            texts += [turn.assistant, turn.observation.text]
    rng = random.Random(seed)
    numbers = [str(v) for v in range(NUMBERS) for _ in range(3)]
    rng.shuffle(numbers)
    texts.append(" ".join(numbers))
    del np
    return texts


class _NullSegmenter:
    """Building an Episode only to read its prompts needs no segmenter."""

    identifier = "none"


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A transformers tokenizer: byte-level BPE on `texts`, then Qwen2.5-VL's added tokens in order."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rsagent.policies.qwen_random import ADDED_TOKENS, N_SPECIAL

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKEN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    # every number below NUMBERS is its own token: the learned merges would leave some split
    numbers = [str(v) for v in range(NUMBERS)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(numbers), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    # ordinary (non-special) added tokens, matched in the raw text before BPE: every number below NUMBERS
    # with and without its leading space (both, or an unspaced match would split off the space), and the
    # system prompt's fixed blocks (a compact rendering of the same tools that inference, SFT and RL
    # share because they share this tokenizer)
    forms = [f for n in numbers for f in (" " + n, n)]
    tok.add_tokens([AddedToken(f, normalized=False) for f in forms + list(prompt_blocks())])
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS[:N_SPECIAL]],
                   special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS[N_SPECIAL:]])
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    return tok


def prompt_blocks() -> tuple[str, ...]:
    """The system prompt's fixed parts (task rules for Qwen's pixel frame, the Hermes tools block): one token each."""
    from rsagent.core.frames import SmartResizeFrame
    from rsagent.env.prompt import system_prompt, task_prompt
    from rsagent.env.tools import TOOLS

    rules = task_prompt(8, SmartResizeFrame().rule).rsplit("\nYou have at most", 1)[0]
    tools = system_prompt(list(TOOLS.values()), 8, SmartResizeFrame().rule).split("\n\n# Tools", 1)[1]
    return rules, "# Tools" + tools


def shapes_model_config(tokenizer, rope_theta: float = 1e6, merge: int = 2, text_layers: int = 4, patch: int = 14):
    """Qwen2.5-VL at CPU size: `text_layers` (4) text layers of width 128 (heads of 32), a 4-block vision tower
    of width 128 on `patch`-pixel patches (Qwen's 14, or 7); `merge` patches a side make one visual token (Qwen's 2,
    or 1: a 112 px scene as 64 tokens; with 7 px patches, 4 for 28 px tokens)."""
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    vocab = len(tokenizer)
    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=text_layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": [4, 6, 6]},
                         tie_word_embeddings=True, bos_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=4, hidden_size=128, intermediate_size=384, num_heads=4, out_hidden_size=128,
                           fullatt_block_indexes=[1, 3], window_size=112, patch_size=patch, spatial_merge_size=merge,
                           temporal_patch_size=2),
        **ids)


def build_shapes_model(seed: int = 0, texts: list[str] | None = None, merge: int = 2, text_layers: int = 4,
                       patch: int = 14):
    """(model, processor): random weights, the domain tokenizer, the project's chat template."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rsagent.policies.qwen import make_processor

    if patch not in (7, 14) or patch * merge not in (14, 28):
        raise RsagentError(f"patch {patch} px merged {merge} a side: give patch 14 with merge 1 or 2 (tokens of 14 or "
                           f"28 px), or patch 7 with merge 2 or 4")
    tokenizer = train_tokenizer(texts if texts is not None else corpus(seed=seed))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(shapes_model_config(tokenizer, merge=merge, text_layers=text_layers,
                                                                   patch=patch)).eval()
    _number_embeddings(model, tokenizer)
    processor = make_processor(tokenizer, Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge), max_pixels=MAX_PIXELS)
    return model, processor


def _number_embeddings(model, tokenizer) -> None:
    """Give the number tokens a smooth start: sinusoids of the value (plus the random init), so that
    near coordinates begin near each other, in the input and (tied) in the output embedding. Random
    rows make every coordinate an unrelated class, which a from-scratch model learns slowly."""
    import torch

    emb = model.get_input_embeddings().weight
    dim = emb.shape[1]
    freqs = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float32) / dim * torch.log(torch.tensor(512.0)))
    with torch.no_grad():
        for value in range(NUMBERS):
            angle = value * freqs
            row = torch.stack([angle.sin(), angle.cos()], 1).flatten()[:dim] * emb.std() * 1.5
            for form in (str(value), f" {value}"):
                emb[tokenizer.convert_tokens_to_ids(form)] += row


def save_shapes_model(out: str | Path, seed: int = 0, vision_steps: int = 0, aligned: bool = False,
                      rescale: bool = False, progress: bool = True, merge: int = 2, text_layers: int = 4,
                      patch: int = 14, vision_workers: int = 0, resume: bool = False, device: str | None = "cpu") -> dict:
    """Write the model (random weights; with `vision_steps`, its vision tower then pretrained on the
    scene graph, `shapes_vision`, its scenes drawn by `vision_workers` processes), tokenizer, image processor
    and template to `out`; returns its description. Pretraining saves its state in OUT/vision-checkpoint
    every 250 steps; `resume` continues it (the model is otherwise rebuilt from `seed`, as it was). The tower
    pretrains on `device` (None: cuda when available)."""
    from rsagent.shapes_vision import VISION_STATE

    out = Path(out)
    checkpoint = out / VISION_CHECKPOINT
    held = out.exists() and any(out.iterdir())
    interrupted = (checkpoint / VISION_STATE).exists()
    if resume and not interrupted:
        raise RsagentError(f"--resume: {out} holds no interrupted vision pretraining ({checkpoint / VISION_STATE})")
    if held and not resume:  # resume: the saved state continues; anything written after it is written again
        hint = ": it holds an interrupted vision pretraining, continue it with --resume" if interrupted else ""
        raise RsagentError(f"{out}: the folder is not empty{hint}; or choose a new --out")
    from rsagent.core.device import resolve_device
    from rsagent.policies.qwen import save_model_folder

    device = resolve_device(device) if vision_steps > 0 else "cpu"

    model, processor = build_shapes_model(seed, merge=merge, text_layers=text_layers, patch=patch)
    vision_log = []
    if vision_steps > 0:
        from rsagent.shapes_vision import pretrain_vision

        vision_log = pretrain_vision(model, processor, vision_steps, seed=seed, aligned=aligned, rescale=rescale,
                                     workers=vision_workers, log=(lambda r: print(json.dumps(r), flush=True)) if progress else None,
                                     checkpoint=checkpoint, device=device)
    save_model_folder(out, model, processor, max_pixels=MAX_PIXELS)
    info = describe(model, processor)
    (out / "shapes_model.json").write_text(json.dumps({**info, "seed": seed, "vision_steps": vision_steps, "aligned": aligned,
                                                       "rescale": rescale, "merge": merge, "text_layers": text_layers, "patch": patch,
                                                       "vision_log": vision_log}, indent=1) + "\n")
    shutil.rmtree(checkpoint, ignore_errors=True)  # the model is whole: nothing left to resume
    return info


def describe(model, processor) -> dict:
    n = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return {"parameters": n, "vision_parameters": vision, "vocab": len(processor.tokenizer),
            "scene_size": SCENE_SIZE, "max_pixels": MAX_PIXELS, "rope": model.config.text_config.rope_parameters}
