"""The benchmarks' shared code (bench/common.py, the shortened model bench/gpu.py builds): quick checks of
what they compute, no timings. The benchmarks themselves are run by hand (docs/performance.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the benchmarks import each other as top-level modules
    import common

    return common


def test_table_is_markdown(common):
    assert common.table(["a", "b"], [[1, "x"], [2.5, None]]).splitlines() == [
        "| a | b |", "| --- | --- |", "| 1 | x |", "| 2.5 | None |"]


def test_machine_records_cpus_load_and_command(common):
    info = common.machine()
    assert info["cpus"] >= 1 and len(info["load"]) == 3 and info["command"]
    assert "load average" in common.describe_machine(info)


def test_shapes_tasks_enlarge_scene_and_mask_together(common):
    from rsagent.data.shapes.generate import generate

    small, = common.shapes_tasks("test", 1)
    big, = common.shapes_tasks("test", 1, size=(224, 168))
    sample = generate("test", 0)
    assert small.query == big.query == sample.query
    assert np.array_equal(small.gt.mask, sample.mask)
    assert big.image.shape == (168, 224, 3) and big.gt.mask.shape == (168, 224)
    assert big.gt.mask.mean() == pytest.approx(sample.mask.mean(), abs=0.01)  # the same share of the picture


def test_build_model_with_fewer_text_layers(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    from qwen_kv_cache import build_model

    model = build_model("tiny", "cpu", torch.float32, layers=1)
    assert len(model.model.language_model.layers) == 1
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape[:2] == (1, 3)


def test_grounding_episode_answers_are_the_trajectorys_first_turn(monkeypatch):
    """`bench/shapes_grounding.py --answer episode`: the prompt is an episode's real first prompt and the
    loss covers exactly the oracle's first turn, the text a synthesized trajectory starts with."""
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    import shapes_grounding as G

    from rsagent.core.frames import SmartResizeFrame
    from rsagent.env.parse import parse_answer
    from rsagent.segmenters.grabcut import GrabCutSegmenter
    from rsagent.shapes_model import build_shapes_model

    frame = SmartResizeFrame()
    items = [G.as_episode(it, frame, GrabCutSegmenter()) for it in G.scene_items("train", 7, 8, 112)]
    assert len(items) >= 2
    for it in items:
        system, user = it["messages"]
        assert system["role"] == "system" and "<tools>" in system["content"][0]["text"]
        assert it["query"] in user["content"][0]["text"] and user["content"][1]["image"].shape == (112, 112, 3)
        parsed = parse_answer(it["answer"])
        assert parsed.format_ok and parsed.call["name"] in ("segment", "zoom_in")  # every target exists here
        x0, y0, x1, y1 = parsed.call["arguments"]["box"]
        tx0, ty0, tx1, ty1 = it["boxes"][it["target"]]
        assert x0 < tx1 and tx0 < x1 and y0 < ty1 and ty0 < y1  # the oracle's first box meets its target

    _, processor = build_shapes_model(0)
    processor.tokenizer.padding_side = "right"
    inputs = G.batch_inputs(processor, items[:2], frame, with_answer=True)
    for b, it in enumerate(items[:2]):
        supervised = inputs["input_ids"][b][inputs["labels"][b] != -100]
        assert processor.tokenizer.decode(supervised) == it["answer"] + "<|im_end|>"


def test_grounding_attend_loss_supervises_the_rows_that_write_the_box(monkeypatch):
    """`--attend-aux`: the rows of one attention head that predict the four coordinates are pulled onto the
    queried shape's visual tokens; a few steps on that loss alone raise the weight they put there."""
    pytest.importorskip("transformers")
    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    import shapes_grounding as G

    from rsagent.core.frames import SmartResizeFrame
    from rsagent.shapes_model import build_shapes_model, corpus

    colour = G.scene_items("train", 3, 8, 112, colour_only=True)
    assert colour and all(it["query"] == f"the {it['colour']} shape" for it in colour)
    model, processor = build_shapes_model(0, texts=corpus(n_samples=20, n_episodes=1))
    model.config.text_config._attn_implementation = "eager"
    processor.tokenizer.padding_side = "right"
    items = [it for i in range(4) for it in G.scene_items("train", i, 4, 112)][:6]
    inputs = G.batch_inputs(processor, items, SmartResizeFrame(), with_answer=True)
    attend = G.AttendTarget(processor.tokenizer, layer=-1)
    for b, it in enumerate(items):  # the supervised rows are those before the box's four numbers
        coords = torch.isin(inputs["labels"][b], attend.numbers).nonzero().flatten()[:4]
        assert [int(processor.tokenizer.decode(inputs["input_ids"][b][t])) for t in coords] == list(it["boxes"][it["target"]])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def on_target() -> float:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
        att, mass = out.attentions[-1][:, 0], []
        for b, it in enumerate(items):
            coords = torch.isin(inputs["labels"][b], attend.numbers).nonzero().flatten()[:4]
            visual = (inputs["input_ids"][b] == model.config.image_token_id).nonzero().flatten()
            mass.append(float(att[b][coords - 1][:, visual[torch.from_numpy(it["cover"] > 0)]].sum(-1).mean()))
        return sum(mass) / len(mass)

    before = on_target()
    for _ in range(15):
        out = model(**inputs, output_attentions=True)
        loss = attend.loss(out.attentions, inputs, items, model.config.image_token_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert on_target() > max(2 * before, 0.3)


def test_grounding_with_frozen_vision_blocks_trains_only_the_merger_there(monkeypatch, tmp_path, small_shapes_model):
    """`--freeze-vision-blocks`: a run of the bench itself keeps the vision tower's patch embedding and
    blocks bit for bit and changes its merger and the language model."""
    pytest.importorskip("transformers")
    import sys

    import torch
    from safetensors.torch import load_file

    monkeypatch.syspath_prepend(str(BENCH))
    import shapes_grounding as G

    folder = small_shapes_model[0]
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["shapes_grounding.py", "--model", str(folder), "--out", str(out),
                                      "--freeze-vision-blocks", "--steps", "3", "--batch", "4", "--eval", "4",
                                      "--eval-every", "0", "--minutes", "5"])
    G.main()
    before, after = load_file(folder / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    vision = [k for k in before if k.startswith("visual.")]  # as the checkpoint names them
    merger = [k for k in vision if k.startswith("visual.merger.")]
    assert merger and all(torch.equal(before[k], after[k]) for k in vision if k not in merger)
    assert any(not torch.equal(before[k], after[k]) for k in merger)
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("visual."))
    assert json.loads((out / "result.json").read_text())["steps"] == 3


def test_grounding_mix_items_are_the_datasets_samples_with_their_first_turns(monkeypatch):
    """`--queries mix`: training items are the shapes dataset's own samples (every query kind, absent and
    several-target ones included), answered in the episode's words by the oracle's first turn."""
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    import shapes_grounding as G

    from rsagent.core.frames import SmartResizeFrame
    from rsagent.data.shapes.generate import generate
    from rsagent.env.parse import parse_answer
    from rsagent.segmenters.grabcut import GrabCutSegmenter

    frame, segmenter, kinds = SmartResizeFrame(), GrabCutSegmenter(), set()
    for index in range(40):
        sample = generate("train", index)
        item, = G.dataset_items("train", index)
        assert item["query"] == sample.query and np.array_equal(item["mask"], sample.mask)
        assert item["cover"].shape == (16,) and item["cover"].sum() == pytest.approx(sample.mask.sum() / 28 ** 2, abs=1e-6)
        call = parse_answer(G.as_episode(item, frame, segmenter)["answer"]).call
        kinds.add(sample.kind)
        if not sample.targets:
            assert call["name"] == "submit" and not call["arguments"].get("mask_ids")  # absent: nothing to box
        else:
            x0, y0, x1, y1 = call["arguments"]["box"]
            assert sample.mask[y0:y1, x0:x1].any()  # the first box meets a target
    assert {"absent", "multi", "relation"} <= kinds


def test_grounding_mix_needs_episode_answers(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.syspath_prepend(str(BENCH))
    import shapes_grounding as G

    monkeypatch.setattr(sys, "argv", ["shapes_grounding.py", "--out", str(tmp_path), "--queries", "mix"])
    with pytest.raises(SystemExit):
        G.main()
    assert "--queries mix needs --answer episode" in capsys.readouterr().err


def test_token_probe_reads_more_colour_after_perception_pretraining(common, small_shapes_model, tmp_path):
    """bench/shapes_token_probe.py: per-shape probes on the frozen tokens count every test shape once and
    read colour better from a tower after a short perception pretraining than from the random one."""
    import torch

    import shapes_token_probe as P
    from rsagent.policies.qwen import load_processor, load_qwen_model, pixel_limits, save_model_folder
    from rsagent.shapes_vision import pretrain_vision

    folder = str(small_shapes_model[0])
    model = load_qwen_model(folder, "cpu", torch.float32)
    processor = load_processor(folder, *pixel_limits(folder))
    pretrain_vision(model, processor, 100, batch=8)
    save_model_folder(tmp_path, model, processor, *pixel_limits(folder))
    train, test = P.scenes("train", 200), P.scenes("test", 60)
    random_tower, pretrained = (P.probe_model(path, train, test) for path in (folder, str(tmp_path)))
    assert random_tower["test_shapes"] == pretrained["test_shapes"] == sum(len(s.shapes) for s in test)
    assert set(pretrained["kind"]["by_size"]) <= {"tiny", "small", "medium", "large"}
    assert pretrained["colour"]["accuracy"] > random_tower["colour"]["accuracy"] + 0.1
    assert pretrained["colour"]["accuracy"] > pretrained["colour"]["chance"] + 0.3
