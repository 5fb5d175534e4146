"""The CPU-sized shapes model: domain tokenizer with Qwen2.5-VL's added tokens, the real architecture, and
a saved folder that the qwen policy loads and runs to the end of an episode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rsagent.cli import main  # noqa: E402
from rsagent.core.frames import SmartResizeFrame  # noqa: E402
from rsagent.data.shapes import write_split  # noqa: E402
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask  # noqa: E402
from rsagent.policies.qwen_random import ADDED_TOKENS  # noqa: E402


@pytest.fixture(scope="module")
def small(small_shapes_model):
    """The shared small shapes model (conftest), with its description."""
    from rsagent.shapes_model import describe

    folder, model, processor = small_shapes_model
    return folder, model, processor, describe(model, processor)


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
    assert info["rope"]["rope_theta"] == 1e6


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


def test_the_folder_s_pixel_limits_are_the_policy_s_unless_overridden(small):
    from rsagent.policies.qwen import QwenConfig, QwenPolicy
    from rsagent.shapes_model import MAX_PIXELS

    folder = small[0]
    policy = QwenPolicy(QwenConfig(model=str(folder)))
    assert policy.config.max_pixels == MAX_PIXELS == policy.frame.max_pixels
    assert policy.processor.image_processor.size["longest_edge"] == MAX_PIXELS
    # a big view is shown at the trained size, not at Qwen's default limit
    assert policy.frame.display_size(1000, 1000) == (112, 112)
    wider = QwenPolicy(QwenConfig(model=str(folder), max_pixels=4 * MAX_PIXELS), model=small[1])
    assert wider.frame.max_pixels == 4 * MAX_PIXELS and wider.frame.display_size(1000, 1000) == (224, 224)


def test_token_labels_follow_the_scene_graph():
    import numpy as np

    from rsagent.data.shapes.generate import rng_for
    from rsagent.data.shapes.scene import COLOURS, KINDS, SceneConfig, sample_scene
    from rsagent.shapes_vision import sub_grid, token_labels

    assert (sub_grid(28), sub_grid(14)) == (4, 2)
    for index in range(5):
        scene = sample_scene(rng_for("val", index), SceneConfig(size=112))
        col, kind, occ = token_labels(scene, 28)
        assert col.shape == (16, len(COLOURS) + 1) and kind.shape == (16, len(KINDS) + 1) and occ.shape == (16, 16)
        fine = token_labels(scene, 14)  # one token per 14 px patch (--merge 1): 64 tokens, 2x2 sub-cells
        assert [a.shape for a in fine] == [(64, len(COLOURS) + 1), (64, len(KINDS) + 1), (64, 4)]
        # both tell the occupancy of the same 7 px cells, laid out on the 16x16 grid of the scene
        np.testing.assert_allclose(fine[2].reshape(8, 8, 2, 2).transpose(0, 2, 1, 3).reshape(16, 16),
                                   occ.reshape(4, 4, 4, 4).transpose(0, 2, 1, 3).reshape(16, 16), atol=1e-5)
        np.testing.assert_allclose(col.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(kind.sum(1), 1.0, atol=1e-5)
        covered = np.any([s.mask for s in scene.shapes], axis=0)
        for r in range(4):
            for c in range(4):
                block = covered[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28]
                assert abs(col[r * 4 + c, -1] - (1 - block.mean())) < 1e-5  # background share
                assert abs(occ[r * 4 + c].mean() - block.mean()) < 1e-5
        # each shape's pixels are counted under its own colour and kind
        s = max(scene.shapes, key=lambda s: s.mask.sum())
        share = sum(s.mask[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28].mean() for r in range(4) for c in range(4))
        assert col[:, list(COLOURS).index(s.colour)].sum() >= share - 1e-5


@pytest.mark.parametrize("aligned", [False, True])
def test_vision_pretraining_learns_the_colours_and_positions_and_touches_only_the_vision_tower(aligned):
    import torch

    from rsagent.shapes_model import build_shapes_model, corpus
    from rsagent.shapes_vision import pretrain_vision

    model, processor = build_shapes_model(seed=0, texts=corpus(n_samples=20, n_episodes=1))
    text_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".visual." not in n}
    vision_before = model.model.visual.patch_embed.proj.weight.detach().clone()
    torch.set_num_threads(1)
    log = pretrain_vision(model, processor, steps=150, batch=16, aligned=aligned, rescale=True)
    assert [r["step"] for r in log][-1] == 150 and all(r["seconds"] >= 0 for r in log)
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["colour_acc"] > 0.35  # chance among 8 colours is 1/8 (0.84 after 600 steps of 32)
    assert log[-1]["position_acc"] > 0.9  # which of the 16 cells a token is: chance 1/16
    assert not torch.equal(model.model.visual.patch_embed.proj.weight, vision_before)
    # the visual tokens leave as long as word embeddings (not ~100x longer, as training leaves them)
    from rsagent.data.shapes.generate import rng_for
    from rsagent.data.shapes.scene import SceneConfig, sample_scene

    images = [sample_scene(rng_for("test", i), SceneConfig(size=112)).image for i in range(8)]
    pixels = processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        tokens = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
    words = model.get_input_embeddings().weight.norm(dim=-1).mean()
    assert 0.5 < float(tokens.norm(dim=-1).mean() / words) < 2.0
    assert all(torch.equal(p, text_before[n]) for n, p in model.named_parameters() if ".visual." not in n)


def _saved_folder_runs_an_episode(model, processor, folder: Path, capsys) -> None:
    """`model` saved to `folder` loads as `--policy qwen --model folder` and plays one turn of a shapes sample."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    split = write_split(folder.parent / "test", "test", 1)
    rec = json.loads((split / "manifest.jsonl").read_text().splitlines()[0])
    code = main(["segment", str(split / rec["image"]), rec["query"], "--policy", "qwen", "--model", str(folder),
                 "--max-pixels", "12544", "--max-turns", "1", "--max-new-tokens", "8", "--out", str(folder.parent / "run")])
    assert code == 0 and "turns=1" in capsys.readouterr().out


def test_a_model_of_one_patch_per_token_trains_its_vision_and_runs_an_episode(tmp_path, capsys):
    """`--merge 1`: each 14 px patch is its own visual token (64 for a 112 px scene); the perception
    labels, the processor and the qwen policy follow the folder's config."""
    import torch

    from rsagent.shapes_model import build_shapes_model, corpus
    from rsagent.shapes_vision import pretrain_vision, visual_tokens
    from rsagent.data.shapes.generate import rng_for
    from rsagent.data.shapes.scene import SceneConfig, sample_scene

    model, processor = build_shapes_model(seed=0, texts=corpus(n_samples=20, n_episodes=1), merge=1)
    assert model.config.vision_config.spatial_merge_size == 1 == processor.image_processor.merge_size
    torch.set_num_threads(1)
    log = pretrain_vision(model, processor, steps=120, batch=16)
    assert log[-1]["loss"] < log[0]["loss"] and log[-1]["colour_acc"] > 0.25  # chance 1/8 (0.83 after 600 of 32)
    image = sample_scene(rng_for("test", 0), SceneConfig(size=112)).image
    assert visual_tokens(model.model.visual, processor, [image]).shape == (64, 128)
    _saved_folder_runs_an_episode(model, processor, tmp_path / "m1", capsys)


def test_the_language_model_s_depth_is_a_choice(tmp_path, capsys):
    """`rsagent shapes model --text-layers N`: N decoder layers, the vision tower and tokenizer unchanged."""
    import torch

    from rsagent.shapes_model import build_shapes_model, corpus

    texts = corpus(n_samples=20, n_episodes=1)
    deep, _ = build_shapes_model(seed=0, texts=texts, text_layers=6)
    base, _ = build_shapes_model(seed=0, texts=texts)
    assert deep.config.text_config.num_hidden_layers == 6 == len(deep.model.language_model.layers)
    assert len(base.model.language_model.layers) == 4
    assert all(torch.equal(p, q) for p, q in zip(deep.model.visual.parameters(), base.model.visual.parameters()))
    assert main(["shapes", "model", "--out", str(tmp_path / "m"), "--text-layers", "0"]) == 2
    assert "--text-layers must be at least 1" in capsys.readouterr().err


def test_a_tower_of_7_pixel_patches_gives_the_same_tokens_and_runs_an_episode(tmp_path, capsys):
    """`--patch 7 --merge 4`: the vision tower sees 256 patches of a 112 px scene and still gives the language
    model 16 tokens of 28 px; the processor saved with the folder cuts the same patches; a combination that
    would not give 14 or 28 px tokens is refused."""
    import torch

    from rsagent.shapes_model import build_shapes_model, corpus
    from rsagent.shapes_vision import pretrain_vision, visual_tokens
    from rsagent.data.shapes.generate import rng_for
    from rsagent.data.shapes.scene import SceneConfig, sample_scene

    model, processor = build_shapes_model(seed=0, texts=corpus(n_samples=20, n_episodes=1), patch=7, merge=4)
    assert model.config.vision_config.patch_size == 7 == processor.image_processor.patch_size
    torch.set_num_threads(1)
    log = pretrain_vision(model, processor, steps=40, batch=8)
    assert log[-1]["loss"] < log[0]["loss"]
    image = sample_scene(rng_for("test", 0), SceneConfig(size=112)).image
    pixels = processor.image_processor(images=[image], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 16, 16]]  # 256 patches
    assert visual_tokens(model.model.visual, processor, [image]).shape == (16, 128)
    _saved_folder_runs_an_episode(model, processor, tmp_path / "p7", capsys)
    assert main(["shapes", "model", "--out", str(tmp_path / "bad"), "--patch", "7", "--merge", "1"]) == 2
    assert "patch 7 px merged 1 a side" in capsys.readouterr().err


def test_vision_pretraining_draws_the_same_batches_in_a_worker_process(small, capsys):
    """`workers=1` (`--vision-workers`, the CLI's default) trains on exactly the batches drawn in the training
    process: the same log and the same weights; a negative count is refused."""
    import copy

    import torch

    from rsagent.shapes_vision import pretrain_vision

    _, model, processor, _ = small
    torch.set_num_threads(1)
    runs = []
    for workers in (0, 1):
        copy_ = copy.deepcopy(model)
        log = pretrain_vision(copy_, processor, steps=25, batch=4, workers=workers)
        runs.append((log, torch.cat([p.detach().flatten() for p in copy_.model.visual.parameters()])))
    (log0, weights0), (log1, weights1) = runs
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in log0] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in log1]
    assert torch.equal(weights0, weights1)
    assert not torch.equal(weights0, torch.cat([p.flatten() for p in model.model.visual.parameters()]))
    assert main(["shapes", "model", "--out", "unused", "--vision-steps", "5", "--vision-workers", "-1"]) == 2
    assert "--vision-workers must be 0 or more" in capsys.readouterr().err


def test_vision_pretraining_cut_halfway_resumes_to_the_uninterrupted_weights(small, tmp_path):
    """A pretraining stopped after its checkpoint at step 25 (a crash at step 50, before its end) and run
    again with the same `checkpoint` folder continues from step 25: the same log and the same tower as one
    uninterrupted run; other settings are refused."""
    import copy

    import pytest
    import torch

    from rsagent.core.errors import RsagentError
    from rsagent.shapes_vision import VISION_STATE, pretrain_vision

    _, model, processor, _ = small
    torch.set_num_threads(1)

    def tower(m):
        return torch.cat([p.detach().flatten() for p in m.model.visual.parameters()])

    whole = copy.deepcopy(model)
    log_whole = pretrain_vision(whole, processor, steps=50, batch=4, save_every=25)

    def crash(rec):
        if rec["step"] == 50:
            raise KeyboardInterrupt

    cut = copy.deepcopy(model)
    with pytest.raises(KeyboardInterrupt):
        pretrain_vision(cut, processor, steps=50, batch=4, save_every=25, checkpoint=tmp_path, log=crash)
    assert torch.load(tmp_path / VISION_STATE, weights_only=False)["step"] == 25
    resumed = copy.deepcopy(model)  # a new process: the random tower again, then the saved state
    seen = []
    log_resumed = pretrain_vision(resumed, processor, steps=50, batch=4, save_every=25, checkpoint=tmp_path,
                                  log=seen.append)
    assert [r["step"] for r in seen] == [50]  # only the steps after the checkpoint ran
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in log_resumed] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in log_whole]
    assert torch.equal(tower(resumed), tower(whole))
    assert not torch.equal(tower(resumed), tower(model))
    with pytest.raises(RsagentError, match="other settings.*'lr': \\(0.002, 0.001\\)"):
        pretrain_vision(copy.deepcopy(model), processor, steps=50, batch=4, lr=1e-3, checkpoint=tmp_path)


def test_shapes_model_resume_needs_the_interrupted_state_and_refuses_a_finished_folder(tmp_path, capsys):
    from rsagent.shapes_model import VISION_CHECKPOINT
    from rsagent.shapes_vision import VISION_STATE

    out = tmp_path / "base"
    assert main(["shapes", "model", "--out", str(out), "--vision-steps", "2", "--resume"]) == 2
    assert "holds no interrupted vision pretraining" in capsys.readouterr().err
    (out / VISION_CHECKPOINT).mkdir(parents=True)
    (out / VISION_CHECKPOINT / VISION_STATE).write_bytes(b"")
    assert main(["shapes", "model", "--out", str(out), "--vision-steps", "2"]) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    done = tmp_path / "done"
    assert main(["shapes", "model", "--out", str(done), "--vision-steps", "2"]) == 0
    assert not (done / VISION_CHECKPOINT).exists() and (done / "model.safetensors").exists()
    assert main(["shapes", "model", "--out", str(done), "--vision-steps", "2"]) == 2
    assert "the folder is not empty; or choose a new --out" in capsys.readouterr().err


def test_shapes_model_asks_for_cuda_only_where_there_is_one(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    out = tmp_path / "base"
    assert main(["shapes", "model", "--out", str(out), "--vision-steps", "2", "--device", "cuda"]) == 2
    assert "device cuda: no CUDA device is available" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was built or written
