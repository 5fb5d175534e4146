"""scripts/shapes_results.py: docs/results.md's tables come from real `rsagent eval` folders, the paired
differences equal `rsagent compare`'s, and an arm that was not run says so instead of vanishing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from rsagent.cli import main
from rsagent.eval.compare import compare_runs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shapes_results.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("shapes_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_from_real_eval_folders(tmp_path):
    evals = tmp_path / "recipe" / "eval"
    root = tmp_path / "shapes"
    # two "stages" that really differ: the oracle with one turn (box only, no corrections) and with eight
    for name, turns in (("sft", 1), ("rl", 8)):
        assert main(["eval", "--dataset", "shapes", "--root", str(root), "--split", "test:6", "--policy", "oracle",
                     "--max-turns", str(turns), "--out", str(evals / f"{name}-test"), "--no-progress"]) == 0
    (tmp_path / "recipe" / "sft-s1").mkdir()  # a second SFT seed trained, not yet evaluated
    results = _load_script()
    text, data = results.build(tmp_path / "recipe")
    sft = json.loads((evals / "sft-test" / "summary.json").read_text())
    rl = json.loads((evals / "rl-test" / "summary.json").read_text())
    assert data["arms"]["sft"]["test"]["gIoU"] == sft["gIoU"]
    assert f"| SFT only | {sft['gIoU']:.3f} [" in text
    assert f"| SFT + RL | {rl['gIoU']:.3f} [" in text
    assert "| untrained | not run | not run | not run | not run |" in text
    # the grounded model SFT starts from is an arm of its own, and "SFT only - grounded" waits for it
    assert "| grounded, before SFT | not run | not run | not run | not run |" in text
    assert data["paired"]["SFT only - grounded"] == {"test": None, "test-novel": None}
    assert "| RL only (from the untrained model) | not run | not run | not run | not run |" in text
    assert "| SFT only, seed 1 | not run | not run | not run | not run |" in text
    assert data["paired"]["SFT only (seed 1) - untrained"] == {"test": None, "test-novel": None}
    assert data["paired"]["SFT + RL - RL only from the grounded model"] == {"test": None, "test-novel": None}
    expected = compare_runs(evals / "sft-test", evals / "rl-test")
    assert data["paired"]["SFT + RL - SFT only"]["test"]["gIoU"] == expected["gIoU"]
    assert f"{expected['gIoU']['diff']:+.3f}" in text
    assert data["turns"][8]["agent"]["gIoU"] == rl["gIoU"] and data["turns"][1]["agent"] is None
    assert "| *query-blind: the box None for every query, then submit* | not run | - | not run | - |" in text

    # the bench beside the arms: box-only and the query-blind box it chose on `val`, run for real
    import subprocess
    bench = Path(__file__).resolve().parents[1] / "bench" / "shapes_oracle.py"
    subprocess.run([sys.executable, str(bench), "--n", "4", "--blind-val", "3", "--out", str(evals / "box-only-test.json")],
                   check=True, capture_output=True, timeout=600)
    report = json.loads((evals / "box-only-test.json").read_text())
    blind = report["blind_box"]
    x0, y0, x1, y1 = blind["box"]
    assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112 and blind["val_samples"] == 3
    text, data = results.build(tmp_path / "recipe")
    cell = report["settings"][results.BLIND]["all"]
    assert f"| *query-blind: the box {blind['box']} for every query, then submit* | {cell['mean']:.3f} [" in text
    assert data["blind"]["test"] == cell and data["blind_box"] == blind["box"]

    out = tmp_path / "docs" / "results.md"
    notes = tmp_path / "notes.md"
    notes.write_text("## By hand\n")
    argv, sys.argv = sys.argv, ["shapes_results.py", str(tmp_path / "recipe"), "--out", str(out), "--notes", str(notes)]
    try:
        results.main()
    finally:
        sys.argv = argv
    assert out.read_text().endswith("## By hand\n")
    assert (tmp_path / "docs" / "results" / "ablation.png").stat().st_size > 5000
    assert json.loads((tmp_path / "docs" / "results" / "ablation.json").read_text())["arms"]["rl"]["test"]["n"] == 6


def test_first_box_reads_where_the_agent_went_first(tmp_path):
    """scripts/first_box.py on a real eval folder: the oracle's first box (2 turns: box, then submit) is on the
    queried shape every time, one box per scene."""
    spec = importlib.util.spec_from_file_location("first_box", SCRIPT.parent / "first_box.py")
    first_box = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(first_box)
    root = tmp_path / "shapes"
    out = tmp_path / "oracle"
    assert main(["eval", "--dataset", "shapes", "--root", str(root), "--split", "test:8", "--policy", "oracle",
                 "--max-turns", "2", "--out", str(out), "--no-progress"]) == 0
    r = first_box.analyse(out)
    manifest = [json.loads(x) for x in (root / "test" / "manifest.jsonl").read_text().splitlines()][:8]
    assert r["present"] == sum(bool(m["targets"]) for m in manifest) >= 5
    assert r["picked"] == r["boxed"] == r["present"] and r["picked_share"] == 1.0
    assert r["distinct_first_boxes"] == r["present"]  # one box per scene, each its own target's
    # scores apart for present and absent targets, and by query kind, from the eval's own results
    ious = {x["sample_id"]: x["IoU"] for x in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    present = [ious[m["sample_id"]] for m in manifest if m["targets"]]
    assert r["present_targets"]["n"] == len(present) and r["absent_targets"]["n"] == 8 - len(present)
    assert r["present_targets"]["gIoU"] == pytest.approx(sum(present) / len(present))
    assert r["all"]["gIoU"] == pytest.approx(sum(ious.values()) / 8)
    assert sum(k["n"] for k in r["kinds"].values()) == 8
    assert {kind for kind in r["kinds"]} == {m["kind"] for m in manifest}
    # paired against a run that submits nothing: on present targets it loses everything the oracle scored
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("".join(
        json.dumps({**x, "I": 0, "IoU": 0.0 if x["U"] else 1.0}) + "\n"
        for x in map(json.loads, (out / "results.jsonl").read_text().splitlines())))
    paired = first_box.against(empty, out)["present_targets"]
    assert paired["n"] == len(present) and paired["diff"] == pytest.approx(sum(present) / len(present))


def test_stage_times_are_written_by_the_scripts_and_summed_into_the_page(tmp_path):
    """scripts/shapes_lib.sh's `timed` around a real `evaluate` (an oracle eval) and a failing command, run twice
    like a stage resumed in a second session: docs/results.md's table sums the parts and counts the failure."""
    import subprocess
    repo = SCRIPT.parents[1]
    out = tmp_path / "recipe"
    script = ('source scripts/shapes_lib.sh; '
              'evaluate --policy oracle --max-turns 2 -- test "$OUT/eval/sft-test" --root "$ROOT" --no-progress; '
              'timed broken false || true; timed broken sleep 1')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OUT": str(out), "ROOT": str(tmp_path / "shapes"),
           "EVAL_N": "3", "RS": f"{sys.executable} -m rsagent.cli", "PYTHONPATH": str(repo / "src")}
    subprocess.run(["bash", "-euc", script], cwd=repo, env=env, check=True, capture_output=True, timeout=600)
    lines = (out / "logs" / "times.tsv").read_text().splitlines()
    assert [line.split("\t")[:1] + line.split("\t")[2:3] for line in lines] == [
        ["eval/sft-test", "0"], ["broken", "1"], ["broken", "0"]]
    assert json.loads((out / "eval" / "sft-test" / "summary.json").read_text())["n"] == 3
    results = _load_script()
    text, data = results.build(out)
    broken = data["stage_times"]["broken"]
    assert broken["parts"] == 2 and broken["failed"] == 1 and broken["seconds"] >= 1
    assert f"| broken | {broken['seconds'] / 60:.1f} | 2 | 1 |" in text
    assert list(data["stage_times"]) == ["eval/sft-test", "broken"]
    (out / "logs" / "times.tsv").write_text("eval/sft-test\tlong\n")
    with pytest.raises(SystemExit, match="times.tsv:1"):
        results.build(out)
