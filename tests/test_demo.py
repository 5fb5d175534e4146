"""`rsagent demo` and `--policy demo`: the trained shapes agent shipped in the package, end to end (real
model, real GrabCut, real files). Assertions hold for any shipped agent, not only this checkpoint's answers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rsagent.cli import main  # noqa: E402
from rsagent.core.errors import ModelLoadError  # noqa: E402
from rsagent.data.shapes import generate  # noqa: E402
from rsagent.policies import demo_agent  # noqa: E402

LINE = re.compile(r"turns=(\d+) end=(\w+) iou=(n/a|[0-9.]+) seconds=([0-9.]+) out=(\S+)")
SEED = 6  # a test scene whose target the current agent partly finds (the IoU check holds for any answer)


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im) > 0


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """LISA's rule, written out again: I / U, 1 when both are empty (shapes masks have no ignore pixels)."""
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def result_line(stdout: str) -> re.Match:
    m = LINE.fullmatch(stdout.strip().splitlines()[-1])
    assert m, stdout
    return m


def test_demo_on_a_test_scene_writes_the_page_and_reports_the_true_iou(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "rsagent.cli", "demo", "--seed", str(SEED), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    sample = generate("test", SEED)
    assert f"shapes test sample {SEED}: {sample.query}" in proc.stdout
    m = result_line(proc.stdout)
    turns = int(m.group(1))
    assert 1 <= turns <= 8 and m.group(2) in ("submit", "budget") and Path(m.group(5)) == out

    # the files segment writes, plus the scene and its ground truth
    names = [f"turn_{i:02d}.png" for i in range(1, turns + 1)]
    for name in ["mask.png", "trajectory.json", "index.html", "image.png", "gt.png", *names]:
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    assert all(f"src='{n}'" in page for n in names) and sample.query in page
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["query"] == sample.query and len(traj["turns"]) == turns
    # reports name the shipped agent, not this machine's install path; the settings keep the path
    assert traj["config"]["policy"] == "qwen:shipped shapes agent:greedy"
    assert traj["config"]["policy_settings"]["model"].endswith("shapes_demo")
    with Image.open(out / "image.png") as im:
        assert np.array_equal(np.asarray(im), sample.scene.image)

    # the printed IoU is the IoU of mask.png against the scene's ground truth, recomputed here
    pred, gt = read_mask(out / "mask.png"), sample.mask
    assert pred.shape == gt.shape == (112, 112) and gt.any()
    assert np.array_equal(read_mask(out / "gt.png"), gt)
    assert float(m.group(3)) == pytest.approx(iou(pred, gt), abs=5e-5)


def test_a_query_on_a_shapes_scene_is_scored_by_the_grammar(tmp_path, capsys):
    sample = generate("test", 1)
    shape = sample.scene.shapes[0]
    query = f"the {shape.colour} {shape.kind}"
    # what the grammar means, computed from the scene's shapes directly: every shape of that colour and kind
    truth = np.zeros_like(sample.mask)
    for s in sample.scene.shapes:
        if (s.colour, s.kind) == (shape.colour, shape.kind):
            truth |= s.mask
    out = tmp_path / "q"
    assert main(["demo", "--seed", "1", "--query", query, "--out", str(out), "--max-turns", "4"]) == 0
    m = result_line(capsys.readouterr().out)
    assert int(m.group(1)) <= 4
    assert np.array_equal(read_mask(out / "gt.png"), truth)
    assert float(m.group(3)) == pytest.approx(iou(read_mask(out / "mask.png"), truth), abs=5e-5)

    # text outside the grammar: said so, run anyway, no ground truth (and none left from the run before)
    assert main(["demo", "--seed", "1", "--query", "the thing on the left please", "--out", str(out),
                 "--max-turns", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "outside the shapes query grammar" in stdout
    assert result_line(stdout).group(3) == "n/a"
    assert not (out / "gt.png").exists() and (out / "mask.png").is_file()


def test_demo_on_any_picture_says_the_agent_knows_only_shapes(coco128_target, tmp_path, capsys):
    target = coco128_target("000000000009-2")  # a real photo, 640x480
    out = tmp_path / "photo"
    assert main(["demo", "--image", str(target.image_path), "--query", "the broccoli", "--out", str(out),
                 "--max-turns", "3"]) == 0
    stdout = capsys.readouterr().out
    assert "trained on the procedural shapes domain only" in stdout
    assert result_line(stdout).group(3) == "n/a"
    assert read_mask(out / "mask.png").shape == (480, 640)
    assert not (out / "gt.png").exists() and not (out / "image.png").exists()


def test_policy_demo_in_eval_and_segment_matches_the_demo_command(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", "shapes", "--root", str(tmp_path / "shapes"), "--split", "test:3",
                 "--policy", "demo", "--batch-size", "1", "--out", str(out), "--no-progress"]) == 0
    assert re.fullmatch(r"n=3 gIoU=[0-9.]+ cIoU=[0-9.]+ failed=0 out=\S+", capsys.readouterr().out.strip())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["failed"] == 0
    rows = {r["sample_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    # the same agent, scene and query in `rsagent segment --policy demo`: the same answer as in eval
    split = tmp_path / "shapes" / "test"
    rec = json.loads((split / "manifest.jsonl").read_text().splitlines()[2])
    assert main(["segment", str(split / rec["image"]), rec["query"], "--policy", "demo", "--gt-mask",
                 str(split / rec["mask"]), "--out", str(tmp_path / "seg")]) == 0
    m = result_line(capsys.readouterr().out)
    assert float(m.group(3)) == pytest.approx(rows[rec["sample_id"]]["IoU"], abs=5e-5)


@pytest.mark.parametrize("case", ["missing", "corrupt", "no-query", "empty-query", "model", "seed"])
def test_bad_input_is_one_error_line_and_exit_2(case, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args, says = {
        "missing": (["demo", "--image", str(tmp_path / "nope.jpg"), "--query", "the cat"], "no such file"),
        "corrupt": (["demo", "--image", str(corrupt), "--query", "the cat"], "not a readable image"),
        "no-query": (["demo", "--image", str(corrupt)], "--image needs --query"),
        "empty-query": (["demo", "--query", " "], "--query is empty"),
        "model": (["segment", str(corrupt), "x", "--policy", "demo", "--model", "runs/x"], "--policy qwen --model"),
        "seed": (["demo", "--seed", "-2"], "--seed must be 0 or more"),
    }[case]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rsagent: error:") and says in err[0], err
    assert not (tmp_path / "out" / "mask.png").exists()


def test_the_console_command_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rsagent.cli", "demo", "--image", str(tmp_path / "nope.png"),
                           "--query", "x"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"rsagent: error: {tmp_path / 'nope.png'}: no such file"


def test_a_missing_agent_is_a_clear_error(tmp_path, monkeypatch):
    assert (demo_agent.demo_agent_dir() / "model.safetensors").stat().st_size < 8_000_000  # ships small
    monkeypatch.setattr(demo_agent, "AGENT_DIR", tmp_path / "shapes_demo")
    with pytest.raises(ModelLoadError, match="demo agent is missing.*ship_demo_agent.py"):
        demo_agent.demo_policy()


def test_ship_copies_only_the_inference_files_and_records_where_they_came_from(tmp_path):
    from safetensors.torch import load_file

    from rsagent.train.ship import ship_agent

    src = demo_agent.demo_agent_dir()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.bin").write_text("from an earlier agent")
    out = ship_agent(src, tmp_path / "old", dtype="float32", test_giou=0.5, evaluation="test:100")
    assert sorted(p.name for p in out.iterdir()) == sorted([*demo_agent.INFERENCE_FILES, demo_agent.AGENT_INFO])
    info = json.loads((out / "agent.json").read_text())
    assert info["source"] == str(src) and info["storage_dtype"] == "float32" and info["test_gIoU"] == 0.5
    assert info["max_new_tokens"] == 200 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", info["shipped"])
    shipped, upcast = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert shipped.keys() == upcast.keys()
    for name, tensor in shipped.items():  # bf16 -> fp32 is exact
        assert upcast[name].dtype == torch.float32 and upcast[name].equal(tensor.float())
