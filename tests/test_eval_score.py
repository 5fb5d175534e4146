"""`rsagent score` against an independent implementation of the metrics (numpy by hand, here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_manifest import build_manifest, pick_targets, write_lines

from rsagent.eval import DatasetSpec, comparable, score


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsagent.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def dataset(coco128_targets, tmp_path_factory):
    """Mask-PNG targets with ignore bands, an empty target, odd sample ids, and predictions of every kind."""
    root = tmp_path_factory.mktemp("scoreset")
    entries = build_manifest(root, pick_targets(coco128_targets, 7), as_masks=True, ignore_band=True)
    entries[5]["sample_id"] = "ref+5-17"         # refer-style ids with characters that need care
    entries[6]["sample_id"] = "sub/dir-6"
    entries.append({"sample_id": "empty-target", "image": entries[0]["image"], "query": "a unicorn", "polygons": []})
    entries.append({"sample_id": "empty-target-hit", "image": entries[1]["image"], "query": "a dragon",
                    "polygons": []})
    write_lines(root / "manifest.jsonl", entries)
    pred = root / "pred"
    kinds = {}
    for index, e in enumerate(entries):
        sid = e["sample_id"]
        with Image.open(root / e["image"]) as im:
            w, h = im.size
        gt = np.asarray(Image.open(root / e["mask"])) > 0 if "mask" in e else np.zeros((h, w), bool)
        out = pred / f"{sid}.png"
        kind = ["exact", "shifted", "grown", "missing", "wrong-size", "corrupt", "rgb", "empty", "blob"][index]
        kinds[sid] = kind
        if kind == "exact":
            _png(out, gt.astype(np.uint8) * 255)
        elif kind == "shifted":
            _png(out, np.roll(gt, (7, -5), axis=(0, 1)).astype(np.uint8))  # values 0/1: non-zero counts
        elif kind == "grown":
            grown = gt.copy()
            for dy in (-3, 0, 3):
                for dx in (-3, 0, 3):
                    grown |= np.roll(gt, (dy, dx), axis=(0, 1))
            _png(out, grown.astype(np.uint8) * 255)
        elif kind == "wrong-size":
            _png(out, np.full((h + 1, w), 255, np.uint8))
        elif kind == "corrupt":
            out.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif kind == "rgb":
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[np.roll(gt, 4, axis=1)] = (255, 40, 40)
            _png(out, rgb)
        elif kind == "empty":
            _png(out, np.zeros((h, w), np.uint8))
        elif kind == "blob":
            blob = np.zeros((h, w), np.uint8)
            blob[10:30, 10:50] = 200
            _png(out, blob)
    return root, entries, pred, kinds


def independent(root: Path, entries: list[dict], pred: Path, protocol: str) -> dict:
    """gIoU / cIoU from the files, by hand: LISA's rules, or the named variant."""
    ious, total_i, total_u = [], 0, 0
    for e in entries:
        with Image.open(root / e["image"]) as im:
            w, h = im.size
        gt = np.asarray(Image.open(root / e["mask"])) > 0 if "mask" in e else np.zeros((h, w), bool)
        ignore = np.asarray(Image.open(root / e["ignore"])) > 0 if "ignore" in e else np.zeros((h, w), bool)
        p = np.zeros((h, w), bool)
        try:
            arr = np.asarray(Image.open(pred / f"{e['sample_id']}.png"))
            if arr.shape[:2] == (h, w):
                p = (arr.max(axis=2) if arr.ndim == 3 else arr) > 0
        except (OSError, ValueError):
            pass
        if protocol == "ignore-as-target":
            gt = gt | ignore
        else:
            p, gt = p & ~ignore, gt & ~ignore
        i, u = int((p & gt).sum()), int((p | gt).sum())
        total_i += i
        total_u += u
        if protocol == "drop-empty" and u == 0:
            continue
        ious.append(1.0 if u == 0 else i / u)
    return {"gIoU": float(np.mean(ious)), "cIoU": total_i / total_u}


def test_score_cli_agrees_with_an_independent_implementation(dataset, tmp_path):
    root, entries, pred, kinds = dataset
    out = tmp_path / "run"
    proc = run_cli("score", "--dataset", "manifest", "--root", root, "--predictions", pred, "--out", out,
                   "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 predictions missing, 2 unreadable" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    ref = independent(root, entries, pred, "lisa")
    assert abs(summary["gIoU"] - ref["gIoU"]) <= 1e-6 and abs(summary["cIoU"] - ref["cIoU"]) <= 1e-6
    assert proc.stdout.strip() == f"n=9 gIoU={summary['gIoU']:.4f} cIoU={summary['cIoU']:.4f} failed=3 out={out}"
    by_kind = {kinds[s]: s for s in kinds}
    assert summary["n"] == 9 and summary["failed"] == 3
    assert summary["missing"] == [by_kind["missing"]]
    assert sorted(summary["unreadable"]) == sorted([by_kind["wrong-size"], by_kind["corrupt"]])
    assert summary["status"] == {"missing": 1, "ok": 6, "unreadable": 2}
    assert summary["per_turn"] is None and summary["reproduce"]["config"]["predictions"] == str(pred.resolve())

    records = {r["sample_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(records) == 9
    assert records[by_kind["exact"]]["IoU"] == 1.0  # the ignore band is removed from both sides
    assert records["empty-target"] == {**records["empty-target"], "I": 0, "U": 0, "IoU": 1.0, "status": "ok"}
    assert records["empty-target-hit"]["IoU"] == 0.0 and records["empty-target-hit"]["U"] == 800
    assert records["sub/dir-6"]["status"] == "ok" and 0 < records["sub/dir-6"]["IoU"] < 1
    assert "mask is" in records[by_kind["wrong-size"]]["error"]
    missing = records[by_kind["missing"]]
    assert missing["I"] == 0 and missing["U"] > 0 and missing["IoU"] == 0.0
    for r in records.values():
        assert set(r) >= {"sample_id", "I", "U", "IoU", "turns", "status", "seconds"}
    html = (out / "report.html").read_text()
    # pictures are files named by safe_name, and the page links them URL-quoted
    assert (out / "gallery" / "ref%2B5-17.jpg").is_file() and "src='gallery/ref%252B5-17.jpg'" in html
    assert (out / "gallery" / "sub%2Fdir-6.jpg").is_file()
    assert not (out / "trajectories").exists()


@pytest.mark.parametrize("protocol", ["ignore-as-target", "drop-empty"])
def test_other_protocols_agree_with_their_definition(dataset, tmp_path, protocol):
    root, entries, pred, _ = dataset
    summary = score(DatasetSpec.create("manifest", root), pred, tmp_path / protocol, protocol=protocol,
                    progress=False, report=False)
    ref = independent(root, entries, pred, protocol)
    assert abs(summary["gIoU"] - ref["gIoU"]) <= 1e-6 and abs(summary["cIoU"] - ref["cIoU"]) <= 1e-6
    assert summary["n"] == 9
    assert summary["n_giou"] == (8 if protocol == "drop-empty" else 9)
    lisa = independent(root, entries, pred, "lisa")
    assert ref["gIoU"] != pytest.approx(lisa["gIoU"], abs=1e-4)  # the conventions really differ here


def test_existing_results_need_resume_and_resume_completes(dataset, tmp_path):
    root, _, pred, _ = dataset
    spec = DatasetSpec.create("manifest", root)
    first = score(spec, pred, tmp_path / "r", progress=False, report=False)
    with pytest.raises(Exception, match="pass --resume to finish that run, or choose another --out"):
        score(spec, pred, tmp_path / "r", progress=False, report=False)
    # keep 4 lines, as if killed: --resume scores only the rest and the summary is the same
    lines = (tmp_path / "r" / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "r" / "results.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    again = score(spec, pred, tmp_path / "r", resume=True, progress=False, report=False)
    assert comparable(again) == comparable(first)
    assert len((tmp_path / "r" / "results.jsonl").read_text().splitlines()) == 9
    with pytest.raises(Exception, match=r"beyond the 3 samples asked now; a resumed run can take more samples"):
        score(DatasetSpec.create("manifest", root, limit=3), pred, tmp_path / "r", resume=True, progress=False,
              report=False)


def test_resume_with_more_samples_extends_the_run(dataset, tmp_path):
    """test:200 then test:500 with --resume: the first samples are kept, the rest scored, as one fresh run."""
    root, _, pred, _ = dataset
    full = score(DatasetSpec.create("manifest", root), pred, tmp_path / "full", progress=False, report=False)
    score(DatasetSpec.create("manifest", root, limit=4), pred, tmp_path / "r", progress=False, report=False)
    first_lines = (tmp_path / "r" / "results.jsonl").read_text().splitlines()
    extended = score(DatasetSpec.create("manifest", root), pred, tmp_path / "r", resume=True, progress=False,
                     report=False)
    assert comparable(extended) == comparable(full) and full["n"] == 9
    lines = (tmp_path / "r" / "results.jsonl").read_text().splitlines()
    assert lines[:4] == first_lines and len(lines) == 9
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["config"]["dataset"]["limit"] is None and len(run["invocations"]) == 2


def test_bad_predictions_folder(dataset, tmp_path):
    root, *_ = dataset
    proc = run_cli("score", "--dataset", "manifest", "--root", root, "--predictions", tmp_path / "nope",
                   "--out", tmp_path / "o", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("rsagent: error: ") and "not a folder" in proc.stderr
