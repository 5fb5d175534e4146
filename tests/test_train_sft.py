"""Cold-start SFT (`rsagent train sft`): real synthesis on shapes, the real tiny Qwen2.5-VL, TRL's SFTTrainer,
peft, grabcut, files on disk. The collator must give the exact ids and pixels the qwen policy fed and
generated; the loss must cover the answers only; runs log, checkpoint, resume and save a loadable folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("tensorboard")

from rsagent.cli import main  # noqa: E402
from rsagent.core.errors import RsagentError  # noqa: E402
from rsagent.core.image import load_image  # noqa: E402
from rsagent.core.trajectory import Trajectory  # noqa: E402
from rsagent.env.episode import EpisodeTask  # noqa: E402
from rsagent.eval.results import safe_name  # noqa: E402
from rsagent.segmenters import make_segmenter  # noqa: E402
from rsagent.shapes_model import MAX_PIXELS  # noqa: E402
from rsagent.synth.recovery import replay  # noqa: E402
from rsagent.train import load_sft_config, train_sft  # noqa: E402
from rsagent.train.config import CONFIG_FILE, read_config  # noqa: E402
from rsagent.train.sft_data import SFTCollator, load_rows, sft_dataset  # noqa: E402

SMALL = dict(per_device_batch=2, lr=2e-3, gradient_checkpointing=False, logging_steps=1, device="cpu",
             warmup=0.0, scheduler="constant")


@pytest.fixture(scope="module")
def tiny(small_shapes_model):
    """The shared small shapes model (conftest): (folder, model, processor)."""
    return small_shapes_model


@pytest.fixture(scope="module")
def export(shapes_export):
    """`rsagent synth` on 6 shapes scenes (conftest)."""
    return shapes_export


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes-eval")


def _policy(tiny):
    from rsagent.policies.qwen import QwenConfig, QwenPolicy

    folder, model, processor = tiny
    return QwenPolicy(QwenConfig(model=str(folder), device="cpu", max_pixels=MAX_PIXELS), model=model,
                      processor=processor)


def _inference_sequence(policy, export: Path, sample_id: str):
    """Replay the trajectory through a real Episode, turn by turn: the ids the policy feeds (its prompt
    parts) and writes (the answer's tokens, then <|im_end|>), and the pixels it feeds."""
    from rsagent.policies.qwen import _State

    traj = Trajectory.load(export / "trajectories" / f"{safe_name(sample_id)}.json")
    task = EpisodeTask(load_image(traj.image["path"]), traj.query, traj.sample_id)
    episode = replay(traj, task, make_segmenter("grabcut"), [])  # a fresh episode in the trajectory's config
    tok = policy.processor.tokenizer
    state, ids, answers, pixels, grids = _State(), [], [], [], []
    for turn in traj.turns:
        part, _, pix, grid = policy._new_part(episode, state)
        answer = tok(turn.assistant, add_special_tokens=False)["input_ids"]
        ids += part.tolist() + answer
        answers.append(answer + [tok.convert_tokens_to_ids("<|im_end|>")])
        pixels += pix
        grids += grid
        episode.step(turn.assistant)
    ids.append(tok.convert_tokens_to_ids("<|im_end|>"))  # the last answer's stop token, generated, never fed
    return ids, answers, torch.cat(pixels), torch.stack(grids)


def test_collator_gives_exactly_what_inference_feeds(tiny, export):
    policy = _policy(tiny)
    tok = policy.processor.tokenizer
    collate = SFTCollator(policy.processor, export)
    rows = sft_dataset(load_rows(export))  # through Arrow, as the trainer reads them (None keys and all)
    multi_turn = 0
    for row in rows:
        batch = collate([row])
        ids, _, pixels, grids = _inference_sequence(policy, export, row["sample_id"])
        got = batch["input_ids"][0].tolist()
        # the template closes the conversation with a newline after the last <|im_end|>: untrained, never fed
        assert got == ids + tok("\n", add_special_tokens=False)["input_ids"]
        assert batch["labels"][0, -1] == -100
        assert torch.equal(batch["pixel_values"], pixels)
        assert torch.equal(batch["image_grid_thw"], grids)
        multi_turn += len(grids) > 1
    assert multi_turn >= 2  # observations with overlays were part of the comparison


def test_loss_covers_the_answers_only(tiny, export):
    policy = _policy(tiny)
    collate = SFTCollator(policy.processor, export)
    rows = sft_dataset(load_rows(export))
    batch = collate(list(rows))  # padded together: padding carries no loss either
    mistakes = 0
    for b, row in enumerate(rows):
        _, answers, _, _ = _inference_sequence(policy, export, row["sample_id"])
        # a deliberately wrong opening ("loss": false in the export) is fed as context, never trained on
        marked = [m.get("loss") is False for m in row["messages"] if m["role"] == "assistant"]
        mistakes += sum(marked)
        answers = [a for a, no_loss in zip(answers, marked) if not no_loss]
        labels = batch["labels"][b].tolist()
        ids = batch["input_ids"][b].tolist()
        spans, current = [], []
        for i, label in enumerate(labels):
            if label != -100:
                assert label == ids[i]
                current.append(label)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        assert spans == answers  # each answer and its <|im_end|>, in order; nothing else
        decoded = policy.processor.tokenizer.decode([t for s in spans for t in s])
        assert "<tool_response>" not in decoded and "<|image_pad|>" not in decoded and "<|im_start|>" not in decoded
    assert mistakes >= 1  # the export opens at least one scene on a wrong region


def _files(out: Path) -> set[str]:
    """The folder's layout, TensorBoard's time-stamped event names aside."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "runs" not in p.relative_to(out).parts}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_logs_checkpoints_evaluates_and_saves_a_loadable_folder(tiny, export, eval_root, tmp_path, capsys):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rsagent.policies.qwen import QwenConfig, QwenPolicy

    out = tmp_path / "sft"
    config = load_sft_config(None, data=str(export), model=str(tiny[0]), out=str(out), max_steps=3, save_steps=2,
                             eval_steps=2, eval_dataset="shapes", eval_root=str(eval_root), eval_split="val:2",
                             eval_n=2, eval_max_turns=2, eval_max_new_tokens=24, **SMALL)
    result = train_sft(config)
    assert result["steps"] == 3 and result["resumed_from"] is None
    log = _log(out)
    train_rows = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for r in train_rows:
        assert {"loss", "learning_rate", "grad_norm", "epoch", "num_input_tokens_seen"} <= set(r)
        assert r["tokens_per_second"] > 0
    rollout = [r for r in log if "eval_rollout_gIoU" in r]
    assert len(rollout) == 1 and rollout[0]["step"] == 2
    assert 0.0 <= rollout[0]["eval_rollout_valid"] <= rollout[0]["eval_rollout_well_formed"] <= 1.0
    summary = json.loads((out / "evals" / "step-2" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["gIoU"] == rollout[0]["eval_rollout_gIoU"]
    turns = summary["tools"]["total_turns"]
    assert rollout[0]["eval_rollout_well_formed"] == (turns - summary["tools"]["malformed"]) / turns
    assert rollout[0]["eval_rollout_valid"] == (turns - summary["tools"]["invalid"]) / turns
    png = (out / "log.png").read_bytes()  # the curves, drawn when the run ends
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (out / "runs").rglob("events.out.tfevents.*")
    board = EventAccumulator(str(events))
    board.Reload()
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/rollout_gIoU",
            "eval/rollout_well_formed"} <= set(board.Tags()["scalars"])
    saved = (out / CONFIG_FILE).read_text()
    assert "max_pixels: 12544" in saved and "bf16: false" in saved  # resolved, not "auto"
    assert (out / "checkpoint-2" / CONFIG_FILE).read_text() == saved
    assert (out / "checkpoint-3" / "optimizer.pt").is_file()
    # the final folder: full weights, the processor with the same pixel limits, the chat template
    assert Qwen2VLImageProcessorPil.from_pretrained(out).size == {"shortest_edge": 3136, "longest_edge": MAX_PIXELS}
    policy = QwenPolicy(QwenConfig(model=str(out), device="cpu"))
    assert policy.processor.tokenizer.get_vocab() == tiny[2].tokenizer.get_vocab()
    trained = dict(policy.model.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in tiny[1].named_parameters())
    code = main(["eval", "--dataset", "shapes", "--root", str(eval_root), "--split", "val:2", "--policy", "qwen",
                 "--model", str(out), "--max-turns", "2", "--max-new-tokens", "24", "--max-pixels", str(MAX_PIXELS),
                 "--out", str(tmp_path / "eval"), "--no-progress"])
    assert code == 0 and "n=2" in capsys.readouterr().out
    for rec in map(json.loads, (tmp_path / "eval" / "results.jsonl").read_text().splitlines()):
        assert rec["turns"] >= 1 and rec["end"] in ("submit", "budget")


def test_cli_resume_continues_from_the_checkpoint_to_the_same_end(tiny, export, tmp_path, capsys):
    base = ["train", "sft", "--data", str(export), "--model", str(tiny[0]), "--device", "cpu", "--batch-size", "2",
            "--lr", "2e-3", "--no-gradient-checkpointing", "--logging-steps", "1", "--save-steps", "1"]
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("warmup: 0.0\nscheduler: constant\nsave_total_limit: 2\n")
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main([*base, "--config", str(cfg), "--out", str(straight), "--max-steps", "4"]) == 0
    assert main([*base, "--config", str(cfg), "--out", str(cut), "--max-steps", "2"]) == 0  # "interrupted" at 2
    assert "steps=2" in capsys.readouterr().out
    # without --resume the folder is refused; with it the run goes on from checkpoint-2
    assert main([*base, "--config", str(cfg), "--out", str(cut), "--max-steps", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--config", str(cfg), "--out", str(cut), "--max-steps", "4", "--resume"]) == 0
    assert "steps=4" in capsys.readouterr().out
    steps = [r["step"] for r in _log(cut) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the resumed run started at step 3
    assert _files(cut) == _files(straight)
    from safetensors.torch import load_file

    a, b = load_file(straight / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # a setting that shapes the weights may not change on resume
    assert main([*base, "--config", str(cfg), "--out", str(cut), "--max-steps", "5", "--resume", "--lr", "1e-3"]) == 2
    assert "lr" in capsys.readouterr().err


def test_lora_saves_the_adapter_and_a_merged_folder(tiny, export, tmp_path):
    from rsagent.policies.qwen import QwenConfig, QwenPolicy

    out = tmp_path / "lora"
    train_sft(load_sft_config(None, data=str(export), model=str(tiny[0]), out=str(out), max_steps=2, save_steps=2,
                              lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, **{**SMALL, "lr": 1e-2}))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    policy = QwenPolicy(QwenConfig(model=str(out), device="cpu"))  # the merge: a plain Qwen2.5-VL folder
    merged = dict(policy.model.named_parameters())
    assert not any("lora" in n for n in merged)
    base = dict(tiny[1].named_parameters())
    changed = {n for n, p in base.items() if not torch.equal(p, merged[n])}
    assert changed and all(".language_model." in n and n.endswith(
        ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
         "down_proj.weight")) for n in changed)


@pytest.mark.parametrize("frozen", [True, "blocks"])
def test_frozen_vision_keeps_the_vision_tower(tiny, export, tmp_path, frozen):
    """True keeps the whole tower; "blocks" (--freeze-vision-blocks) all of it but the merger, which trains."""
    from safetensors.torch import load_file

    out = tmp_path / "frozen"
    train_sft(load_sft_config(None, data=str(export), model=str(tiny[0]), out=str(out), max_steps=2, save_steps=2,
                              freeze_vision=frozen, **SMALL))
    before, after = load_file(tiny[0] / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [k for k in before if k.startswith(("visual.", "model.visual."))]  # the saved (hub) key names
    merger = [k for k in vision if ".merger." in k or k.startswith("visual.merger.")]
    kept = vision if frozen is True else [k for k in vision if k not in merger]
    assert merger and kept and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in kept)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in kept)
    if frozen == "blocks":
        assert any(not torch.equal(before[k], after[k]) for k in merger)
    assert read_config(out / CONFIG_FILE)["freeze_vision"] == frozen  # written back as the run's setting


def test_freeze_vision_blocks_is_a_flag_and_other_values_are_refused(tiny, export, tmp_path, capsys):
    from rsagent.cli import _build_parser

    args = _build_parser().parse_args(["train", "sft", "--data", "d", "--model", "m", "--out", "o",
                                      "--freeze-vision-blocks"])
    assert args.freeze_vision == "blocks"
    config = tmp_path / "c.yaml"
    config.write_text("freeze_vision: merger\n")
    assert main(["train", "sft", "--config", str(config), "--data", str(export), "--model", str(tiny[0]),
                 "--out", str(tmp_path / "o")]) == 2
    assert "freeze_vision must be true, false or blocks, got 'merger'" in capsys.readouterr().err


# --- refusals -----------------------------------------------------------------------------------
def _copy(export: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(export, dst)
    return dst


def test_missing_data_and_bad_settings_are_clear_errors(tiny, tmp_path, capsys):
    code = main(["train", "sft", "--data", str(tmp_path / "nowhere"), "--model", str(tiny[0]), "--out",
                 str(tmp_path / "o")])
    assert code == 2 and "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sft.jsonl").write_text("")
    assert main(["train", "sft", "--data", str(tmp_path / "empty"), "--model", str(tiny[0]), "--out",
                 str(tmp_path / "o")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["train", "sft", "--model", "m", "--out", "o"]) == 2
    assert "--data" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-3\nlearning_rate: 2\n")
    with pytest.raises(RsagentError, match="unknown config key learning_rate"):
        load_sft_config(bad, data="d", model="m", out="o")
    bad.write_text("max_steps: many\n")
    with pytest.raises(RsagentError, match="max_steps"):
        load_sft_config(bad, data="d", model="m", out="o")


def test_an_export_with_a_missing_image_is_refused(tiny, export, tmp_path):
    data = _copy(export, tmp_path)
    row = json.loads((data / "sft.jsonl").read_text().splitlines()[-1])
    (data / row["images"][-1]).unlink()
    with pytest.raises(RsagentError, match=f"{row['images'][-1]} is missing"):
        train_sft(load_sft_config(None, data=str(data), model=str(tiny[0]), out=str(tmp_path / "o"), **SMALL))
    assert not (tmp_path / "o").exists()


def test_a_placeholder_count_mismatch_is_refused(export, tmp_path):
    data = _copy(export, tmp_path)
    lines = (data / "sft.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["images"] = row["images"][:-1]
    (data / "sft.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(RsagentError, match="image placeholders but"):
        load_rows(data)


def test_a_frame_mismatch_is_refused(tiny, export, tmp_path):
    from PIL import Image

    # training with other pixel limits than the export was synthesized with
    with pytest.raises(RsagentError, match="frame mismatch.*max_pixels=12544"):
        train_sft(load_sft_config(None, data=str(export), model=str(tiny[0]), out=str(tmp_path / "o"),
                                  max_pixels=56 * 56 * 2, **SMALL))
    # a picture the processor would resize (100x100 becomes 112x112): not what the policy saw
    data = _copy(export, tmp_path)
    rel = json.loads((data / "sft.jsonl").read_text().splitlines()[0])["images"][0]
    Image.new("RGB", (100, 100)).save(data / rel)
    with pytest.raises(RsagentError, match="frame mismatch.*100x100.*resize to 112x112"):
        train_sft(load_sft_config(None, data=str(data), model=str(tiny[0]), out=str(tmp_path / "o"), **SMALL))


def test_the_shipped_configs_load():
    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    loaded = {p.stem: load_sft_config(p) for p in sorted(configs.glob("sft_*.yaml"))}
    assert set(loaded) == {"sft_shapes_cpu", "sft_qwen7b_full", "sft_qwen7b_lora"}
    assert loaded["sft_shapes_cpu"].device == "cpu" and not loaded["sft_shapes_cpu"].lora
    assert loaded["sft_qwen7b_lora"].lora and not loaded["sft_qwen7b_full"].lora
    zero3 = yaml.safe_load((configs / "accelerate" / "zero3.yaml").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
