"""`rsagent eval` end to end: outputs, kill -9 then --resume, failures that are scored, local workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from test_eval_manifest import build_manifest, pick_targets, write_lines

from rsagent.core.errors import RsagentError
from rsagent.core.image import load_mask
from rsagent.core.mask import decode_rle, intersection_union
from rsagent.core.trajectory import Trajectory
from rsagent.data.manifest import load_manifest
from rsagent.env.episode import EpisodeConfig
from rsagent.eval import DatasetSpec, comparable, evaluate, safe_name
from rsagent.policies.oracle import OraclePolicy
from rsagent.segmenters import make_segmenter
from rsagent.segmenters.grabcut import GrabCutSegmenter

OPTS = ["--max-turns", "3", "--batch-size", "1", "--no-progress"]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "rsagent.cli", *map(str, args)]


@pytest.fixture(scope="module")
def evalset(coco128_targets, tmp_path_factory) -> Path:
    """12 COCO128 targets at full size (about 0.3 s per episode: slow enough to be killed midway)."""
    root = tmp_path_factory.mktemp("evalset")
    build_manifest(root, pick_targets(coco128_targets, 12), side=640)
    return root


@pytest.fixture(scope="module")
def baseline(evalset, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    proc = subprocess.run(cli("eval", "--dataset", "manifest", "--root", evalset, "--out", out, *OPTS),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("n=12 gIoU=") and proc.stdout.strip().endswith(f"out={out}")
    return out


def records_of(out: Path) -> dict:
    return {r["sample_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_outputs_and_summary(evalset, baseline):
    records = records_of(baseline)
    samples = load_manifest(evalset)
    assert sorted(records) == sorted(s.sample_id for s in samples)
    summary = json.loads((baseline / "summary.json").read_text())
    for s in samples:
        r = records[s.sample_id]
        assert set(r) >= {"sample_id", "I", "U", "IoU", "turns", "status", "seconds", "turn_iou", "tools"}
        assert r["status"] == "ok" and 1 <= r["turns"] <= 3 and len(r["turn_iou"]) == r["turns"]
        # the saved mask is the trajectory's final answer, and I / U are counted on it
        traj = Trajectory.load(baseline / "trajectories" / f"{safe_name(s.sample_id)}.json")
        image, gt = s.load()
        mask = load_mask(baseline / "masks" / f"{safe_name(s.sample_id)}.png", size=(image.shape[1], image.shape[0]))
        assert np.array_equal(mask, decode_rle(traj.final["rle"]))
        p, g = mask, gt.mask
        assert (r["I"], r["U"]) == (int((p & g).sum()), int((p | g).sum())) == intersection_union(mask, gt)
        assert r["IoU"] == r["I"] / r["U"] == r["turn_iou"][-1]
        assert sum(r["tools"].values()) + r["invalid"] == r["turns"]
    ious = [records[k]["IoU"] for k in sorted(records)]
    assert summary["n"] == 12 and summary["failed"] == 0 and summary["failed_ids"] == []
    assert summary["gIoU"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert summary["cIoU"] == sum(r["I"] for r in records.values()) / sum(r["U"] for r in records.values())
    assert summary["gIoU"] > 0.6  # oracle + grabcut, 3 turns
    per_turn = summary["per_turn"]
    assert len(per_turn["iou"]) == 3 and per_turn["iou"][-1] == pytest.approx(summary["gIoU"], abs=1e-12)
    assert per_turn["iou"][0] <= per_turn["iou"][-1] and per_turn["active"][0] == 12
    assert sum(summary["turns"]["histogram"].values()) == 12
    assert summary["tools"]["calls"]["segment"] >= 12 and summary["tools"]["calls"]["submit"] <= 12
    assert sum(summary["end_reasons"].values()) == 12
    rep = summary["reproduce"]
    assert rep["config"]["dataset"]["root"] == str(evalset) and rep["config"]["episode"]["max_turns"] == 3
    assert rep["config"]["settings"]["policy"] == "oracle" and rep["config"]["settings"]["segmenter"] == "grabcut"
    assert rep["models"]["policy"].startswith("oracle(") and rep["models"]["segmenter"].startswith("grabcut")
    assert {"python", "rsagent", "numpy", "pycocotools"} <= set(rep["versions"])
    assert rep["git"] is None or len(rep["git"]["revision"]) == 40
    assert summary["run"]["argv"][:2] == ["rsagent", "eval"] and summary["run"]["executor"] == "local"
    html = (baseline / "report.html").read_text()
    assert "<svg" in html and html.count("class='card'") == 12
    page = baseline / "pages" / safe_name(samples[0].sample_id) / "index.html"
    assert page.is_file() and (page.parent / "turn_01.jpg").is_file()


def test_kill_9_then_resume_gives_the_identical_summary(evalset, baseline, tmp_path):
    out = tmp_path / "run"
    results = out / "results.jsonl"
    proc = subprocess.Popen(cli("eval", "--dataset", "manifest", "--root", evalset, "--out", out, *OPTS),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kept = results.read_bytes().count(b"\n")
    assert 3 <= kept < 12
    assert not (out / "summary.json").exists()
    with open(results, "ab") as fh:
        fh.write(b'{"sample_id": "000000000009-0", "I": 12')  # and a torn write on top

    fresh = subprocess.run(cli("eval", "--dataset", "manifest", "--root", evalset, "--out", out, *OPTS),
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 2 and "pass --resume" in fresh.stderr

    resumed = subprocess.run(cli("eval", "--dataset", "manifest", "--root", evalset, "--out", out, *OPTS, "--resume"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    lines = results.read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(x)["sample_id"] for x in lines}) == 12
    a = json.loads((baseline / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert comparable(a) == comparable(b)
    assert [i["argv"][-1] for i in b["run"]["invocations"]] == ["--no-progress", "--resume"]
    assert len(list((out / "trajectories").glob("*.json"))) == 12


def test_resume_with_another_configuration_is_refused(evalset, baseline):
    proc = subprocess.run(cli("eval", "--dataset", "manifest", "--root", evalset, "--out", baseline,
                              "--max-turns", "4", "--batch-size", "1", "--no-progress", "--resume"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "another configuration (episode.max_turns: 3 then, 4 now" in proc.stderr and "Traceback" not in proc.stderr


class FlakyGrabCut(GrabCutSegmenter):
    """Raises on images whose long side is 250 pixels (the test makes two such images)."""

    def set_image(self, image, key=None):
        if max(image.shape[:2]) == 250:
            raise RuntimeError("segmenter exploded on this image")
        return super().set_image(image, key)


def test_failures_are_scored_as_empty_and_counted(coco128_targets, tmp_path):
    targets = pick_targets(coco128_targets, 6)
    entries = build_manifest(tmp_path, targets[:4], side=256)
    flaky = build_manifest(tmp_path / "flaky", targets[4:], side=250)
    for e in flaky:
        e["image"] = f"flaky/{e['image']}"
    truncated = tmp_path / "images" / "truncated.png"
    data = (tmp_path / entries[0]["image"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # the header survives: the size is known, the pixels are not
    entries += flaky + [
        {**entries[0], "sample_id": "truncated", "image": "images/truncated.png"},
        {**entries[1], "sample_id": "no-file", "image": "images/no-such-file.png"},
    ]
    write_lines(tmp_path / "manifest.jsonl", entries)
    summary = evaluate(DatasetSpec.create("manifest", tmp_path), tmp_path / "out", policy_factory=OraclePolicy,
                       segmenter_factory=FlakyGrabCut, episode=EpisodeConfig(max_turns=3), progress=False)
    records = records_of(tmp_path / "out")
    assert summary["n"] == len(records) == 8
    assert summary["failed"] == 4
    assert set(summary["failed_ids"]) == {flaky[0]["sample_id"], flaky[1]["sample_id"], "truncated", "no-file"}
    assert summary["end_reasons"]["failed"] == 2 and summary["end_reasons"]["not_run"] == 2
    samples = {s.sample_id: s for s in load_manifest(tmp_path)}
    for sid in (flaky[0]["sample_id"], flaky[1]["sample_id"]):
        r = records[sid]
        _, gt = samples[sid].load()
        assert r["status"] == "failed" and "segmenter exploded" in r["error"]
        assert r["I"] == 0 and r["U"] == int(gt.mask.sum()) > 0 and r["IoU"] == 0.0
        assert Trajectory.load(tmp_path / "out" / "trajectories" / f"{sid}.json").final["reason"] == "failed"
    gt_area = int(samples[entries[0]["sample_id"]].load()[1].mask.sum())  # "truncated" shares its target
    assert records["truncated"]["U"] == gt_area and records["truncated"]["IoU"] == 0.0
    assert "corrupt or truncated" in records["truncated"]["error"]
    assert records["no-file"]["U"] == 0 and records["no-file"]["IoU"] == 0.0
    assert "ground truth unavailable" in records["no-file"]["error"]
    ious = [records[k]["IoU"] for k in sorted(records)]
    assert summary["gIoU"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert summary["per_turn"]["iou"][-1] == pytest.approx(summary["gIoU"], abs=1e-12)
    assert "image unavailable" in (tmp_path / "out" / "report.html").read_text()


def test_local_worker_processes_give_the_same_summary(evalset, tmp_path):
    spec = DatasetSpec.create("manifest", evalset, limit=6)
    kwargs = {"policy_factory": OraclePolicy, "segmenter_factory": partial(make_segmenter, "grabcut"),
                  "episode": EpisodeConfig(max_turns=2), "batch_size": 2, "progress": False, "report": False}
    one = evaluate(spec, tmp_path / "one", **kwargs)
    two = evaluate(spec, tmp_path / "two", workers=2, **kwargs)
    assert two["run"]["workers"] == 2 and two["n"] == 6
    assert comparable(one) == comparable(two)
    assert sorted(records_of(tmp_path / "two")) == sorted(records_of(tmp_path / "one"))


def test_usage_errors(evalset, tmp_path):
    kwargs = {"policy_factory": OraclePolicy, "segmenter_factory": GrabCutSegmenter, "progress": False}
    with pytest.raises(RsagentError, match="--workers must be at least 1"):
        evaluate(DatasetSpec.create("manifest", evalset), tmp_path / "o", workers=0, **kwargs)
    with pytest.raises(RsagentError, match="--limit must be at least 1"):
        DatasetSpec.create("manifest", evalset, limit=0)


def test_a_worker_that_cannot_start_is_a_one_line_error(evalset, tmp_path):
    with pytest.raises(RsagentError, match="a worker failed to start: ValueError: unknown segmenter 'nope'"):
        evaluate(DatasetSpec.create("manifest", evalset, limit=2), tmp_path / "o", policy_factory=OraclePolicy,
                 segmenter_factory=partial(make_segmenter, "nope"), workers=2, progress=False)


def test_compare_two_runs_sample_by_sample(evalset, baseline, tmp_path):
    """`rsagent compare A B`: a one-turn oracle run against the baseline on the same 12 targets."""
    short = tmp_path / "short"
    proc = subprocess.run(cli("eval", "--dataset", "manifest", "--root", evalset, "--out", short, "--max-turns", "1",
                              "--batch-size", "1", "--no-progress"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(cli("compare", short, baseline, "--out", tmp_path / "cmp.json"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "cmp.json").read_text())
    a = json.loads((short / "summary.json").read_text())
    b = json.loads((baseline / "summary.json").read_text())
    assert result["n"] == 12
    assert result["gIoU"]["a"] == pytest.approx(a["gIoU"]) and result["gIoU"]["b"] == pytest.approx(b["gIoU"])
    assert result["gIoU"]["diff"] == pytest.approx(b["gIoU"] - a["gIoU"])
    lo, hi = result["gIoU"]["ci95"]
    assert lo <= result["gIoU"]["diff"] <= hi
    assert sum(result["samples"].values()) == 12
    assert proc.stdout.startswith("n=12 gIoU ")
    bad = subprocess.run(cli("compare", short, tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a finished" in bad.stderr
