"""The CPU-sized shapes model: domain tokenizer with Qwen2.5-VL's added tokens, the real architecture, and
a saved folder that the qwen policy loads and runs to the end of an episode."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rsagent.cli import main  # noqa: E402
from rsagent.core.frames import SmartResizeFrame  # noqa: E402
from rsagent.data.shapes import write_split  # noqa: E402
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask  # noqa: E402
from rsagent.policies.qwen_random import ADDED_TOKENS  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A shapes model built from a small corpus (the CLI builds the full one), saved and described."""
    from rsagent.shapes_model import build_shapes_model, corpus, describe

    model, processor = build_shapes_model(seed=0, texts=corpus(n_samples=40, n_episodes=3))
    out = tmp_path_factory.mktemp("shapes-model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, model, processor, describe(model, processor)


class _NoSegmenter:
    identifier = "none"


def test_tokenizer_keeps_qwen_tokens_and_makes_the_prompt_short(small):
    _, model, processor, info = small
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(list(ADDED_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(ADDED_TOKENS)))  # Qwen's order, contiguous
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert tok.eos_token == "<|im_end|>" and info["vocab"] == len(tok) == cfg.text_config.vocab_size
    # coordinates are one token each, with or without the space before them
    pieces = tok.convert_ids_to_tokens(tok('{"box": [3, 40, 111, 399]}')["input_ids"])
    assert {"3", " 40", " 111", " 399"} <= set(pieces)
    # the full system prompt with the tools block costs a handful of tokens, and text round-trips
    image = __import__("numpy").zeros((112, 112, 3), "uint8")
    ep = Episode(EpisodeTask(image, "the red circle"), _NoSegmenter(), EpisodeConfig(max_turns=8), SmartResizeFrame())
    assert len(tok(ep.system_prompt)["input_ids"]) <= 16
    for text in (ep.system_prompt, ep.user_text, "<think>Odd wörds ✓ 12345</think>"):
        assert tok.decode(tok(text)["input_ids"]) == text


def test_model_is_cpu_sized(small):
    _, _, _, info = small
    assert 1_000_000 < info["parameters"] < 5_000_000
    assert info["rope"]["rope_theta"] == 10.0


def test_the_folder_runs_an_episode_through_the_cli(small, tmp_path, capsys):
    folder = small[0]
    split = write_split(tmp_path / "test", "test", 1)
    rec = json.loads((split / "manifest.jsonl").read_text().splitlines()[0])
    code = main(["segment", str(split / rec["image"]), rec["query"], "--policy", "qwen", "--model", str(folder),
                 "--max-turns", "2", "--max-new-tokens", "24", "--gt-mask", str(split / rec["mask"]),
                 "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "turns=2" in out and "end=" in out
    traj = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    assert len(traj["turns"]) == 2 and traj["final"]["reason"] in ("budget", "submit")
