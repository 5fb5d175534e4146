"""`rsagent synth` end to end on real data: what it exports replays through the environment to the
recorded masks, scores as recorded against ground truth drawn independently, parses as strict tool
calls, and is byte-identical across runs, executors and a kill -9 followed by --resume."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rsagent.cli import main
from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth, decode_rle, polygons_to_mask
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import EpisodeTask
from rsagent.env.parse import parse_answer
from rsagent.env.tools import validate_call
from rsagent.eval.results import safe_name
from rsagent.segmenters import make_segmenter
from rsagent.synth.expert import WRONG_OPENINGS
from rsagent.synth.recovery import replay

DETERMINISTIC = ("results.jsonl", "sft.jsonl", "sharegpt.jsonl", "dataset_info.json", "rl_prompts.jsonl",
                 "stats.json", "stats.html")


def synth(*args: str) -> None:
    assert main(["synth", *args, "--no-progress", "--max-pixels", "200000"]) == 0


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file of a run except run.json (its invocation log holds times and argv)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def lisa_iou(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None) -> float:
    keep = np.ones_like(target) if ignore is None else ~ignore
    p, t = pred & keep, target & keep
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def yolo_gt(record: dict, root: Path) -> GroundTruth:
    """Ground truth drawn straight from the YOLO label lines the record names (not via the loaders)."""
    image = load_image(record["image"])
    h, w = image.shape[:2]
    rows = (root / "labels" / "train2017" / f"{Path(record['image']).stem}.txt").read_text().splitlines()
    mask = np.zeros((h, w), bool)
    for line in record["ann_ids"]:
        values = np.asarray(rows[int(line)].split()[1:], np.float64).reshape(-1, 2) * [w, h]
        mask |= polygons_to_mask([values], h, w)
    return GroundTruth(mask)


def check_exports(out: Path, gt_of, min_iou: float) -> int:
    """Replay every SFT record through the environment; check masks, IoU, calls and image files."""
    records = {r["sample_id"]: r for r in lines(out / "results.jsonl")}
    sft = lines(out / "sft.jsonl")
    segmenter = make_segmenter("grabcut")
    assert sft and len(sft) == sum(r["status"] == "accepted" for r in records.values())
    for row in sft:
        rec = records[row["sample_id"]]
        assert rec["status"] == "accepted"
        for path in row["images"]:
            assert (out / path).is_file()
        answers = [m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
                   for m in row["messages"] if m["role"] == "assistant"]
        for answer in answers:  # each assistant message is exactly one valid tool call, strictly formatted
            parsed = parse_answer(answer)
            assert parsed.format_ok and parsed.error is None, answer
            validate_call(parsed.call["name"], parsed.call["arguments"])
        # a deliberately wrong opening is context without loss; every other answer is a target
        no_loss = [i for i, m in enumerate((m for m in row["messages"] if m["role"] == "assistant"), 1)
                   if m.get("loss") is False]
        assert no_loss == rec["mistake_turns"] and no_loss in ([], [1])
        if rec["opening"] not in WRONG_OPENINGS:
            assert no_loss == []
        traj = Trajectory.load(out / "trajectories" / f"{safe_name(row['sample_id'])}.json")
        gt = gt_of(rec)
        task = EpisodeTask(load_image(rec["image"]), rec["query"], rec["sample_id"], gt, rec["image"])
        ep = replay(traj, task, segmenter, answers)
        assert ep.done and ep.final["reason"] == "submit"
        final = ep.answer()
        assert np.array_equal(final, decode_rle(traj.final["rle"]))
        recomputed = lisa_iou(final, gt.mask, gt.ignore)
        assert recomputed == pytest.approx(rec["IoU"], abs=1e-12) and recomputed >= min_iou
        assert traj.metrics["iou"] == rec["IoU"]
    return len(sft)


@pytest.fixture(scope="module")
def yolo_run(coco128_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "yolo"
    synth("--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(out), "--num", "24", "--seed", "3")
    return out


def test_yoloseg_exports_replay_and_score_as_recorded(yolo_run, coco128_root):
    n = check_exports(yolo_run, lambda rec: yolo_gt(rec, coco128_root), 0.7)
    assert any(r["mistake_turns"] for r in lines(yolo_run / "results.jsonl") if r["status"] == "accepted")
    stats = json.loads((yolo_run / "stats.json").read_text())
    assert stats["items"] == 24 and stats["accepted"] == n
    rl = lines(yolo_run / "rl_prompts.jsonl")
    records = lines(yolo_run / "results.jsonl")
    assert len(rl) == sum(r["reject"] != "failed" for r in records)
    for row in rl[:6]:  # the RL ground truth is the independently drawn one
        rec = next(r for r in records if r["sample_id"] == row["sample_id"])
        assert np.array_equal(mask_utils.decode(row["mask"]).astype(bool), yolo_gt(rec, coco128_root).mask)
    kinds = {r["kind"] for r in records}
    assert kinds <= {"referring", "reasoning", "group", "absent"}


def test_same_seed_same_files_in_process_and_with_workers(yolo_run, coco128_root, tmp_path):
    again = tmp_path / "again"
    synth("--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(again), "--num", "24", "--seed", "3",
          "--workers", "2", "--batch-size", "5")
    assert folder_bytes(again) == folder_bytes(yolo_run)


def test_ray_gives_the_same_files(yolo_run, coco128_root, tmp_path):
    pytest.importorskip("ray")
    sharded = tmp_path / "ray"
    synth("--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(sharded), "--num", "24", "--seed", "3",
          "--executor", "ray", "--workers", "2", "--batch-size", "6")
    assert json.loads((sharded / "run.json").read_text())["invocations"][0]["executor"] == "ray"
    assert folder_bytes(sharded) == folder_bytes(yolo_run)


def test_another_seed_gives_other_items(yolo_run, coco128_root, tmp_path):
    other = tmp_path / "other"
    synth("--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(other), "--num", "24", "--seed", "4")
    assert lines(other / "results.jsonl") != lines(yolo_run / "results.jsonl")


def test_kill_then_resume_gives_the_same_files(yolo_run, coco128_root, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rsagent.cli", "synth", "--dataset", "yoloseg", "--root", str(coco128_root),
           "--out", str(out), "--num", "24", "--seed", "3", "--no-progress", "--max-pixels", "200000",
           "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or results.read_bytes().count(b"\n") < 7):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = results.read_bytes().count(b"\n")
    assert 7 <= done < 24, f"the kill came at {done} of 24 items"
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert folder_bytes(out) == folder_bytes(yolo_run)


def make_refcocog(mini: Path, root: Path) -> tuple[dict, dict]:
    """A refer_seg layout from COCO val2017-mini with its own sentences; returns instances and refs by id."""
    inst = json.loads((mini / "annotations" / "instances_val2017_subset.json").read_text())
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    (root / "refcocog").mkdir()
    for img in inst["images"]:
        shutil.copy(mini / "images" / img["file_name"], images / img["file_name"])
    (root / "refcocog" / "instances.json").write_text(json.dumps(inst))
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    anns = sorted((a for a in inst["annotations"] if not a.get("iscrowd")), key=lambda a: -a["area"])[:10]
    refs = []
    for r, ann in enumerate(anns):
        sents = [{"sent_id": 10 * r + j, "sent": f"the {cats[ann['category_id']]} you see here ({j})", "tokens": []}
                 for j in range(1 + r % 2)]
        refs.append({"ref_id": 700 + r, "ann_id": ann["id"], "image_id": ann["image_id"], "split": "train",
                     "sentences": sents, "category_id": ann["category_id"], "sent_ids": [s["sent_id"] for s in sents]})
    with open(root / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return inst, {f"{ref['ref_id']}-{s['sent_id']}": ref for ref in refs for s in ref["sentences"]}


def test_refcocog_keeps_its_own_queries(shared_data, tmp_path):
    root = tmp_path / "refer_seg"
    inst, refs = make_refcocog(shared_data / "coco-val2017-mini", root)
    out = tmp_path / "out"
    synth("--dataset", "refcocog", "--root", str(root), "--split", "train", "--out", str(out), "--seed", "1")
    records = lines(out / "results.jsonl")
    assert sorted(r["sample_id"] for r in records) == sorted(refs)
    sentences = {f"{ref['ref_id']}-{s['sent_id']}": s["sent"] for ref in refs.values() for s in ref["sentences"]}
    assert all(r["query"] == sentences[r["sample_id"]] and r["kind"] == "dataset" for r in records)
    anns = {a["id"]: a for a in inst["annotations"]}
    sizes = {i["id"]: (i["height"], i["width"]) for i in inst["images"]}

    def gt_of(rec: dict) -> GroundTruth:
        ann = anns[refs[rec["sample_id"]]["ann_id"]]
        h, w = sizes[ann["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
        return GroundTruth(mask_utils.decode(rle).astype(bool))

    assert check_exports(out, gt_of, 0.7) >= 3


def test_bad_input_is_one_line(tmp_path, capsys, coco128_root):
    assert main(["synth", "--dataset", "yoloseg", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "rsagent: error:" in capsys.readouterr().err
    assert main(["synth", "--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(tmp_path / "o"),
                 "--openings", "clean_box=x"]) == 2
    assert main(["synth", "--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(tmp_path / "o"),
                 "--rewrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("rsagent: error:") == 2 and "Traceback" not in err


def test_variants_open_each_query_with_another_move(coco128_root):
    from rsagent.eval.run import DatasetSpec
    from rsagent.synth.items import list_items

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        one = list_items(DatasetSpec.create("yoloseg", coco128_root), seed=5, num=80)
        three = list_items(DatasetSpec.create("yoloseg", coco128_root), seed=5, num=240, variants=3)
    groups: dict[str, list] = {}
    for item in three.items:
        groups.setdefault(item.sample_id.split("-v")[0], []).append(item)
    assert len({it.sample_id for it in three.items}) == len(three.items)
    for base, items in list(groups.items())[:-1]:  # --num may cut the last query's variants short
        kinds = [it.opening.kind for it in items]
        assert len(set(kinds)) == len(kinds) and len({it.query for it in items}) == 1
        assert len(items) == (1 if items[0].kind == "absent" else 3), (base, kinds)
    # the first variant of each query is the single-variant run's item
    assert [(it.sample_id, it.query) for it in one.items][:20] == \
        [(it.sample_id, it.query) for it in three.items if "-v" not in it.sample_id][:20]


def test_reasonseg_layout_with_ignore_pixels(coco128_targets, tmp_path):
    """ReasonSeg's own queries; its ignore regions are don't-care in the IoU the filter reads."""
    from test_score_layouts import lisa_label_map

    by_image: dict[str, list] = {}
    for t in coco128_targets:
        if t.area_fraction > 0.02:
            by_image.setdefault(t.image_path.stem, []).append(t)
    root = tmp_path / "ReasonSeg"
    (root / "train").mkdir(parents=True)
    labels = {}
    for k, stem in enumerate(sorted(by_image)[10:16]):
        t = by_image[stem][0]
        w, h = t.width, t.height
        shapes = [{"label": "target", "points": (t.polygon * [w, h]).tolist()}]
        if k % 2:  # an ignore band through the target's middle row
            y = float(t.polygon[:, 1].mean() * h)
            shapes.append({"label": "ignore", "points": [[0, y - 6], [w - 1, y - 6], [w - 1, y + 6], [0, y + 6]]})
        shutil.copy(t.image_path, root / "train" / f"{stem}.jpg")
        (root / "train" / f"{stem}.json").write_text(json.dumps(
            {"text": [f"what someone would call the {t.query[4:]} here"], "is_sentence": True, "shapes": shapes}))
        labels[stem] = lisa_label_map(shapes, h, w)
    out = tmp_path / "out"
    synth("--dataset", "reasonseg", "--root", str(root), "--split", "train", "--out", str(out), "--variants", "2")

    def gt_of(rec: dict) -> GroundTruth:
        label = labels[rec["source_id"]]
        ignore = label == 255
        return GroundTruth(label == 1, ignore if ignore.any() else None)

    assert check_exports(out, gt_of, 0.7) >= 4
    records = lines(out / "results.jsonl")
    assert len(records) == 12 and {r["kind"] for r in records} == {"dataset"}
    assert all(r["opening"] != "wrong_neighbour" for r in records)  # no instance list to take one from


def test_a_corrupt_image_fails_its_item_alone(coco128_targets, tmp_path):
    """A manifest (its own queries) with one unreadable image: that item is counted as failed, no other is lost."""
    rows = []
    for k, t in enumerate([t for t in coco128_targets if t.area_fraction > 0.05][:4]):
        image = t.image_path
        if k == 1:
            image = tmp_path / "broken.jpg"
            image.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
        poly = (t.polygon * [t.width, t.height]).ravel().round(2).tolist()
        rows.append({"sample_id": f"s{k}", "image": str(image), "query": t.query, "polygons": [poly]})
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    synth("--dataset", "manifest", "--root", str(tmp_path / "set.jsonl"), "--out", str(out))
    records = {r["sample_id"]: r for r in lines(out / "results.jsonl")}
    assert sorted(records) == ["s0", "s1", "s2", "s3"]
    assert records["s1"]["reject"] == "failed" and "broken.jpg" in records["s1"]["error"]
    assert all(records[s]["reject"] != "failed" for s in ("s0", "s2", "s3"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["items"] == 4 and stats["reject_reasons"]["failed"] == 1
    assert "s1" not in {r["sample_id"] for r in lines(out / "rl_prompts.jsonl")}


def test_sam2_segmenter_in_workers(coco128_root, tmp_path):
    """--segmenter sam2 with a local folder: each worker loads it; the IoU bar defaults to SAM2's."""
    pytest.importorskip("torch")
    from transformers import Sam2Model

    from rsagent.segmenters.sam2 import tiny_sam2_config

    model = tmp_path / "tiny-sam2"
    Sam2Model(tiny_sam2_config()).save_pretrained(model)
    out = tmp_path / "out"
    synth("--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(out), "--num", "4", "--seed", "1",
          "--segmenter", "sam2", "--sam2-model", str(model), "--device", "cpu", "--workers", "2",
          "--batch-size", "2", "--max-turns", "3")
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["synth"]["filters"]["min_iou"] == 0.85 and run["config"]["segmenter"] == "sam2"
    assert "sam2" in run["models"]["segmenter"]
    records = lines(out / "results.jsonl")
    assert len(records) == 4 and all(r["reject"] != "failed" for r in records)
    # random weights make poor masks: what is accepted still clears SAM2's bar
    assert all(r["IoU"] >= 0.85 for r in records if r["status"] == "accepted")


def test_an_error_after_the_episode_fails_that_item_alone(coco128_root, tmp_path, monkeypatch):
    import rsagent.synth.run as synth_run

    real = synth_run.judge
    broken: list[str] = []

    def judge_or_raise(traj, gt):
        if not broken:
            broken.append(traj.sample_id)
            raise ValueError("judging broke")
        return real(traj, gt)

    monkeypatch.setattr(synth_run, "judge", judge_or_raise)
    out = tmp_path / "out"
    synth("--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(out), "--num", "6", "--seed", "8")
    records = {r["sample_id"]: r for r in lines(out / "results.jsonl")}
    assert len(records) == 6 and len(broken) == 1
    assert records[broken[0]]["reject"] == "failed" and records[broken[0]]["error"] == "ValueError: judging broke"
    assert sum(r["reject"] == "failed" for r in records.values()) == 1


def test_mistake_loss_keeps_the_deliberate_mistakes_as_targets(shapes_export, tmp_path):
    """`rsagent synth --mistake-loss` writes the same conversations without the `"loss": false` marks
    (the export the shipped agent was trained on); the mistakes are recorded either way."""
    root = shapes_export.parent / "shapes"  # the shapes scenes the shared export was drawn from
    out = tmp_path / "with-loss"
    assert main(["synth", "--dataset", "shapes", "--root", str(root), "--split", "train:6", "--max-pixels", "12544",
                 "--max-turns", "4", "--out", str(out), "--mistake-loss", "--no-progress"]) == 0
    marked, plain = lines(shapes_export / "sft.jsonl"), lines(out / "sft.jsonl")
    strip = [[{k: v for k, v in m.items() if k != "loss"} for m in row["messages"]] for row in marked]
    assert [row["messages"] for row in plain] == strip
    assert any(m.get("loss") is False for row in marked for m in row["messages"])
    assert not any("loss" in m for row in plain for m in row["messages"])
    assert [r["mistake_turns"] for r in lines(out / "results.jsonl")] == \
        [r["mistake_turns"] for r in lines(shapes_export / "results.jsonl")]
    assert json.loads((out / "run.json").read_text())["config"]["synth"]["mistake_loss"] is True
