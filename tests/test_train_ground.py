"""Grounding (`rsagent train ground`): the small shapes model trained a few steps on single first turns
writes a folder the qwen policy loads, checkpoints that a resumed run continues to exactly the weights and
log of an uninterrupted one, and refuses settings it cannot run with or resume under."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from rsagent.cli import main  # noqa: E402
from rsagent.core.errors import RsagentError  # noqa: E402
from rsagent.train import GroundConfig, load_ground_config, train_ground  # noqa: E402
from rsagent.train.config import read_config  # noqa: E402
from rsagent.train.ground import STATE_FILE  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = dict(steps=6, batch=4, eval_n=4, eval_every=0, log_steps=1, device="cpu", progress=False)


def _run(tmp_path: Path, name: str, model: Path, **changes) -> dict:
    return train_ground(GroundConfig(model=str(model), out=str(tmp_path / name), **{**SMALL, **changes}))


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def _log(folder: Path) -> list[dict]:
    """The log's rows without their wall-clock seconds."""
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_a_run_writes_a_loadable_model_its_config_log_result_and_checkpoints(small_shapes_model, tmp_path):
    from rsagent.policies.qwen import load_processor, load_qwen_model, pixel_limits

    start, _, processor = small_shapes_model
    result = _run(tmp_path, "run", start, save_steps=4, freeze_vision="blocks")
    out = tmp_path / "run"
    assert result["steps"] == 6 and result["samples"] == 24 and result["out"] == str(out)
    assert json.loads((out / "result.json").read_text()).keys() >= {
        "config", "model", "steps", "samples", "train_scenes", "seconds", "step_seconds_median",
        "before_training_64", "after"}
    assert result["after"]["n"] == 4 and result["before_training_64"]["n"] == 4
    assert read_config(out / "train_config.yaml") == GroundConfig(model=str(start), out=str(out), save_steps=4,
                                                                  freeze_vision="blocks", **SMALL).to_dict()
    assert [row["step"] for row in _log(out)] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "match_loss", "lr", "samples", "scenes", "max_shapes"} <= _log(out)[0].keys()
    # every save_steps, and where the run stopped
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert (out / "checkpoint-4" / STATE_FILE).is_file() and (out / "checkpoint-4" / "train_config.yaml").is_file()
    final, last, begin = _weights(out), _weights(out / "checkpoint-6"), _weights(start)
    assert all(torch.equal(final[k], last[k]) for k in final)
    blocks = [k for k in begin if k.startswith("visual.") and not k.startswith("visual.merger.")]
    assert blocks and all(torch.equal(begin[k], final[k]) for k in blocks)  # freeze_vision: blocks
    assert any(not torch.equal(begin[k], final[k]) for k in begin if not k.startswith("visual."))
    # the final folder is the policy: the qwen loader takes it, at the pixel limits it trained with
    model = load_qwen_model(str(out), "cpu", torch.float32)
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items() if k in final)
    assert pixel_limits(str(out)) == pixel_limits(str(start))
    assert len(load_processor(str(out)).tokenizer) == len(processor.tokenizer)


def test_resume_gives_the_weights_and_log_of_an_uninterrupted_run(small_shapes_model, tmp_path, capsys):
    """Stopped at a checkpoint whose queue still holds items of a partly used scene, drawn under a stage of
    the curriculum that has ended (colour-only queries), then resumed with --resume: the same items,
    learning rates, optimiser and MatchHead state, so the same weights."""
    start = small_shapes_model[0]
    settings = dict(steps=8, colour_first=0.2, attend_aux=0.5)  # every kind of scene source, both aux losses
    straight = _run(tmp_path, "straight", start, **settings)
    _run(tmp_path, "parts", start, stop_after=2, save_steps=2, **settings)
    parts = tmp_path / "parts"
    state = torch.load(parts / "checkpoint-2" / STATE_FILE, weights_only=False)
    assert state["step"] == 2 and state["match"] is not None
    assert state["queue"]["queued"] and all(source["colour_only"] for source, _ in state["queue"]["queued"])
    flags = ["train", "ground", "--model", str(start), "--out", str(parts), "--steps", "8", "--batch", "4",
             "--eval-n", "4", "--eval-every", "0", "--log-steps", "1", "--device", "cpu", "--no-progress",
             "--colour-first", "0.2", "--attend-aux", "0.5"]
    assert main(flags + ["--resume", "--save-steps", "5"]) == 0  # how often it saves may change
    assert "steps=8" in capsys.readouterr().out
    a, b = _weights(tmp_path / "straight"), _weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log(tmp_path / "straight") == _log(parts) and len(_log(parts)) == 8
    resumed = json.loads((parts / "result.json").read_text())
    assert resumed["resumed_from"] == str(parts / "checkpoint-2")
    for key in ("steps", "samples", "train_scenes", "before_training_64", "after"):
        assert resumed[key] == straight[key], key


def test_clear_errors_for_settings_it_cannot_run_or_resume_with(small_shapes_model, tmp_path, capsys):
    with pytest.raises(RsagentError, match="--queries mix needs --answer episode"):
        GroundConfig(out="x", queries="mix", curriculum="0,0").check()
    with pytest.raises(RsagentError, match="--queries mix needs"):
        GroundConfig(out="x", queries="mix", answer="episode").check()  # the dataset draws its own scenes
    with pytest.raises(RsagentError, match="curriculum"):
        GroundConfig(out="x", curriculum="0.1").check()
    with pytest.raises(RsagentError, match="needs --out"):
        GroundConfig().check()
    with pytest.raises(RsagentError, match="freeze_vision"):
        GroundConfig(out="x", freeze_vision="merger").check()
    with pytest.raises(RsagentError, match="unknown config key"):
        load_ground_config(None, out="x", max_steps=3)
    start = small_shapes_model[0]
    _run(tmp_path, "run", start, steps=4, stop_after=1)
    with pytest.raises(RsagentError, match="pass --resume"):
        _run(tmp_path, "run", start, steps=4, stop_after=1)  # a used folder
    with pytest.raises(RsagentError, match="lr: 0.002 then, 0.001 now"):
        _run(tmp_path, "run", start, steps=4, resume=True, lr=1e-3)
    with pytest.raises(RsagentError, match="steps: 4 then, 5 now"):
        _run(tmp_path, "run", start, steps=5, resume=True)  # the schedule follows steps
    assert main(["train", "ground", "--out", str(tmp_path / "mix"), "--queries", "mix"]) == 2
    assert "--queries mix needs --answer episode" in capsys.readouterr().err


def test_the_cli_runs_the_shipped_config_with_overrides(small_shapes_model, tmp_path, capsys):
    config = CONFIGS / "ground_shapes_cpu.yaml"
    shipped = load_ground_config(config)
    assert (shipped.answer, shipped.freeze_vision, shipped.steps, shipped.stop_after) == ("episode", True, 5000, 2625)
    assert (shipped.lr, shipped.curriculum, shipped.queries, shipped.match_aux, shipped.eval_n) == (
        2e-3, "0.1,0.3", "attribute", 1.0, 600)
    out = tmp_path / "run"
    assert main(["train", "ground", "--config", str(config), "--model", str(small_shapes_model[0]), "--out", str(out),
                 "--steps", "4", "--stop-after", "2", "--batch", "2", "--eval-n", "2", "--eval-every", "0",
                 "--log-steps", "1", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("steps=2 picked=") and line.endswith(f"out={out}")
    stored = read_config(out / "train_config.yaml")
    assert (stored["answer"], stored["freeze_vision"], stored["steps"], stored["stop_after"], stored["lr"]) == (
        "episode", True, 4, 2, 2e-3)
    assert [row["step"] for row in _log(out)] == [1, 2] and (out / "checkpoint-2").is_dir()
    assert (out / "model.safetensors").is_file()


def test_the_inventory_answer_lists_every_shape_in_reading_order_then_boxes_the_target(small_shapes_model, tmp_path):
    """`--answer inventory`: the scene's shapes with their boxes, then the bare call; the loss covers all of it."""
    from rsagent.core.frames import SmartResizeFrame
    from rsagent.train.ground_data import answer, batch_inputs, inventory, read_inventory, scene_items
    from rsagent.train.ground_eval import _inventory_check

    items = scene_items("train", 3, 8, 112)
    item = items[0]
    text = inventory(item)
    listed, call = text.split(".\n", 1)
    entries = listed.removeprefix("Shapes: ").split("; ")
    assert len(entries) == len(item["boxes"]) >= 2 and call == answer(item["boxes"][item["target"]])
    for i, box in enumerate(item["boxes"]):  # every shape once, with its words and its box
        line = f"{item['sizes'][i]} {item['colours'][i]} {item['kinds'][i]} [{', '.join(map(str, box))}]"
        assert entries.count(line) == 1
    boxes = [[int(v) for v in e.split(" [")[1].rstrip("]").split(", ")] for e in entries]
    keys = [((b[1] + b[3]) // 2 // 28, (b[0] + b[2]) / 2) for b in boxes]
    assert keys == sorted(keys)  # reading order: the row of visual tokens holding the centre, then left to right
    # the held-out check reads a written list back and scores it against the scene: the true one is right
    read = read_inventory(text)
    assert read == [(*e.split(" [")[0].split(), box) for e, box in zip(entries, boxes)]
    assert read_inventory(call) is None  # an answer without a list
    assert _inventory_check(read, item) == {"shapes": len(entries), "count_right": 1, "found": len(entries),
                                            "colour": len(entries), "kind": len(entries), "size": len(entries)}
    wrong = _inventory_check(read[1:], item)  # the first shape left out
    assert wrong["count_right"] == 0 and wrong["found"] == len(entries) - 1 == wrong["colour"]
    processor = small_shapes_model[2]
    inputs = batch_inputs(processor, [{**item, "answer": text}], SmartResizeFrame(), with_answer=True)
    labelled = inputs["labels"][0][inputs["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == text + "<|im_end|>"
    result = _run(tmp_path, "inv", small_shapes_model[0], steps=2, answer="inventory")
    _run(tmp_path, "call", small_shapes_model[0], steps=2, answer="call")  # the same scenes, the bare call
    assert result["steps"] == 2
    # the list is in the trained sequence: a shape's entry is 10 tokens or more
    assert all(a["tokens"] >= b["tokens"] + 10 for a, b in zip(_log(tmp_path / "inv"), _log(tmp_path / "call")))


def test_the_check_says_what_perceiving_each_attribute_is_worth_and_picks_by_what_the_query_names():
    """The baselines count the shapes that agree with the query's named colour (and kind); `by_named` splits
    picking by the attributes the query names. Scenes are hand-made so every count is known."""
    from rsagent.train.ground_eval import _named_baselines, _named_key

    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    scene = {"boxes": boxes, "colours": ["red", "red", "red", "blue"], "kinds": ["circle", "star", "circle", "star"]}
    red_star = {**scene, "target": 1, "named": [None, "red", "star"]}  # one red star among three reds
    star = {**scene, "target": 3, "named": ["small", None, "star"]}  # "the small star": colour not named
    got = _named_baselines([red_star, star])
    assert got["named_colour"]["picked"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert got["named_colour_kind"]["picked"] == pytest.approx((1 + 1 / 2) / 2)
    assert got["named_colour_kind"]["iou"] == pytest.approx((1 + 1 / 2) / 2)  # disjoint boxes: IoU 1 or 0
    assert [_named_key(it["named"]) for it in (red_star, star)] == ["colour+kind", "size+kind"]
    # every attribute query the generator writes names what its program says
    from rsagent.train.ground_data import eval_items

    for it in eval_items(20, 112):
        size, colour, kind = it["named"]
        assert it["query"] == "the " + " ".join(w for w in (size, colour, kind or "shape") if w)
