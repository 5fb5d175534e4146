"""The shapes domain: scenes, queries resolved from the scene graph, splits, the manifest layout, the CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from rsagent.cli import main
from rsagent.core.errors import DatasetError
from rsagent.core.image import load_mask
from rsagent.core.mask import decode_rle
from rsagent.data import load_dataset
from rsagent.data.shapes import parse_split, write_split
from rsagent.data.shapes import queries as Q
from rsagent.data.shapes.generate import HELD_OUT_PAIRS, HELD_OUT_RELATIONS, SPLITS, VERSION, ShapesConfig, generate
from rsagent.data.shapes.scene import COLOURS, KINDS, MIN_PIXELS, SIZES, plural


def test_the_domain_has_the_kinds_and_colours_asked_for():
    assert len(KINDS) >= 8 and {"ring", "star", "cross"} <= set(KINDS)
    assert len(COLOURS) >= 7


def test_a_shapes_box_follows_its_mask():
    """`Shape.box` is kept between calls (query generation asks for it very often) but never outlives the
    mask it was computed from."""
    shape = generate("train", 3).scene.shapes[0]
    ys, xs = np.nonzero(shape.mask)
    assert shape.box == shape.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    moved = np.zeros_like(shape.mask)
    moved[5:9, 20:31] = True
    shape.mask = moved
    assert shape.box == (20, 5, 31, 9)


def test_a_sample_depends_on_its_split_and_index_only():
    a, b = generate("val", 17), generate("val", 17)
    assert a.query == b.query and a.targets == b.targets
    assert np.array_equal(a.scene.image, b.scene.image)
    assert not np.array_equal(a.scene.image, generate("test", 17).scene.image)


@pytest.mark.parametrize("split", list(SPLITS))
def test_every_query_resolves_from_its_text_to_exactly_its_targets(split):
    kinds = set()
    for index in range(5000, 5060):
        s = generate(split, index)
        kinds.add(s.kind)
        program = Q.parse(s.query)
        assert Q.text(program) == s.query
        assert Q.resolve(program, s.scene) == s.targets, (split, index, s.query)
        assert (s.kind == "absent") == (not s.targets)
        union = np.zeros_like(s.mask)
        for i in s.targets:
            union |= s.scene.shapes[i].mask
        assert np.array_equal(union, s.mask) and (s.mask.any() == bool(s.targets))
    assert len(kinds) >= 6


def _independent(query: str, graph: dict) -> list[int] | None:
    """Target ids of the simple query forms, read from the JSON scene graph alone (None: another form)."""
    shapes = graph["shapes"]
    names = {k: k for k in KINDS} | {plural(k): k for k in KINDS}
    words = query.split()
    if words[:2] == ["all", "the"] and len(words) in (3, 4):
        colour = words[2] if len(words) == 4 or words[2] in COLOURS else None
        kind = names.get(words[-1])
        return [s["id"] for s in shapes if (colour is None or s["colour"] == colour)
                and (kind is None or s["kind"] == kind)]
    if words[0] == "the" and len(words) == 3 and words[1] in COLOURS and words[2] in KINDS:
        return [s["id"] for s in shapes if s["colour"] == words[1] and s["kind"] == words[2]]
    if query == "the shape that could roll":
        return [s["id"] for s in shapes if s["kind"] in ("circle", "ring")]
    if query == "the shape whose colour appears nowhere else":
        colours = [s["colour"] for s in shapes]
        return [s["id"] for s in shapes if colours.count(s["colour"]) == 1]
    if query == "the largest shape":
        best = max(s["full_area"] for s in shapes)
        return [s["id"] for s in shapes if s["full_area"] == best]
    if words[0] == "the" and words[-3:] == ["from", "the", "left"] and words[1] == "first" and words[2] == "shape":
        centres = [(s["box"][0] + s["box"][2]) / 2 for s in shapes]
        return [shapes[int(np.argmin(centres))]["id"]]
    return None


def test_version_2_changed_only_the_absent_samples():
    """Generator version 2 (absent queries in every attribute form) draws every other sample as version 1 did:
    the hash of the first 300 `test` samples that are not absent (268 of them), taken with version 1's code."""
    digest, kept = hashlib.sha256(), 0
    for index in range(300):
        s = generate("test", index)
        if s.kind != "absent":
            digest.update(json.dumps([s.sample_id, s.kind, s.query, s.targets, s.scene.graph()], sort_keys=True).encode())
            kept += 1
    assert VERSION == 2
    assert (kept, digest.hexdigest()) == (268, "848909298d66b75ebbcd9d26cd0257a614df5cf0c96366fd3024a45a7e4a0066")


def test_the_words_of_an_attribute_query_do_not_tell_whether_its_target_exists():
    """Absent queries come in the five attribute forms, about as often as attribute queries do: the share of
    absent queries is about the same in every form (version 1 put every absent query in one form, "the red
    pentagon", where two queries in three were absent). Each absent query names no shape, and a size word is
    never a near call for a shape of that colour and kind."""
    config = ShapesConfig(mix=(("attribute", 2.0), ("absent", 1.0)))
    counts: Counter = Counter()
    for index in range(450):
        s = generate("train", index, config)
        form = Q.desc_form(s.program["desc"])
        counts[form, s.kind] += 1
        if s.kind == "absent":
            assert Q.resolve(s.program, s.scene) == [] and Q.parse(s.query) == s.program
            size, colour, kind = s.program["desc"]
            if size is not None:
                lo, hi = (f * s.scene.size for f in SIZES[size])
                for shape in Q.matches((None, colour, kind), s.scene.shapes):
                    assert shape.radius >= hi * Q.SIZE_RATIO or shape.radius * Q.SIZE_RATIO <= lo, s.query
    forms = {"kind", "colour", "colour kind", "size colour kind", "size kind"}
    assert {form for form, _ in counts} == forms
    absent_share = sum(v for (_, kind), v in counts.items() if kind == "absent") / 450
    for form in forms:
        n = counts[form, "attribute"] + counts[form, "absent"]
        assert n >= 20 and abs(counts[form, "absent"] / n - absent_share) < 0.17, (form, counts)


def test_simple_queries_agree_with_an_independent_reading_of_the_scene_graph():
    checked = 0
    for index in range(120):
        s = generate("test", index)
        graph = json.loads(json.dumps(s.scene.graph()))
        expected = _independent(s.query, graph)
        if expected is not None:
            assert sorted(expected) == s.targets, s.query
            checked += 1
        # the graph's RLE masks are the scene's exact visible masks, disjoint, each big enough
        masks = [decode_rle(sh["mask"]).astype(bool) for sh in graph["shapes"]]
        assert sum(m.sum() for m in masks) == np.logical_or.reduce(masks).sum()
        assert all(m.sum() >= MIN_PIXELS for m in masks)
        for front, hidden in graph["occludes"]:
            assert front > hidden  # later in z is in front
    assert checked >= 30


def test_held_out_combinations_never_reach_train_and_fill_test_novel():
    for index in range(150):
        s = generate("train", 100_000 + index)
        assert not any((sh.colour, sh.kind) in HELD_OUT_PAIRS for sh in s.scene.shapes)
        assert not any(f" {rel} the " in s.query for rel in HELD_OUT_RELATIONS)
        assert not any(f"{c} {k}" in s.query for c, k in HELD_OUT_PAIRS)
        assert not s.novel
    for index in range(40):
        s = generate("test-novel", index)
        assert s.novel
        shown = {f"pair:{sh.colour} {sh.kind}" for i, sh in enumerate(s.scene.shapes) if i in s.targets}
        named = {f"pair:{c} {k}" for c, k in HELD_OUT_PAIRS if f"{c} {k}" in s.query}
        relation = {f"relation:{r}" for r in HELD_OUT_RELATIONS if f" {r} the " in s.query}
        assert set(s.novel) <= shown | named | relation and set(s.novel) & (shown | named | relation)


def test_split_names_and_counts():
    assert parse_split("train:20000") == ("train", 0, 20000)
    assert parse_split("test") == ("test", 0, 1000)
    assert parse_split("test:500-1000") == ("test", 500, 1000)
    with pytest.raises(DatasetError, match="unknown shapes split"):
        parse_split("dev")
    for bad in ("test:many", "test:5-", "test:-5", "test:a-b"):
        with pytest.raises(DatasetError, match="integers"):
            parse_split(bad)
    for bad in ("test:0", "test:7-7", "test:8-3"):
        with pytest.raises(DatasetError, match="at least 1"):
            parse_split(bad)


def test_a_range_of_a_split_lists_only_its_samples_the_same_as_the_whole_split(tmp_path):
    whole = load_dataset("shapes", tmp_path, "test:6")
    part = load_dataset("shapes", tmp_path, "test:3-6")
    assert [s.sample_id for s in part] == [f"test-{i:06d}" for i in (3, 4, 5)]
    assert [s.query for s in part] == [s.query for s in whole[3:]]
    beyond = load_dataset("shapes", tmp_path, "test:6-8")  # the folder grows to 8; the first 6 are unchanged
    assert [s.sample_id for s in beyond] == ["test-000006", "test-000007"]
    assert [s.query for s in load_dataset("shapes", tmp_path, "test:6")] == [s.query for s in whole]


def test_a_written_split_loads_as_shapes_and_as_a_manifest_with_the_same_ground_truth(tmp_path):
    write_split(tmp_path / "test", "test", 6)
    shapes = load_dataset("shapes", tmp_path, "test:6")
    manifest = load_dataset("manifest", tmp_path / "test")
    assert [s.sample_id for s in shapes] == [s.sample_id for s in manifest] == [f"test-{i:06d}" for i in range(6)]
    for a, b in zip(shapes, manifest):
        image, gt = a.load()
        _, gt2 = b.load()
        s = generate("test", int(a.sample_id.split("-")[1]))
        assert a.query == s.query and a.meta["kind"] == s.kind
        assert np.array_equal(image, s.scene.image) and np.array_equal(gt.mask, s.mask)
        assert np.array_equal(gt.mask, gt2.mask)
        graph = json.loads((tmp_path / "test" / a.meta["scene"]).read_text())
        assert np.array_equal(np.logical_or.reduce([decode_rle(graph["shapes"][i]["mask"]).astype(bool)
                                                    for i in a.meta["targets"]] or [np.zeros_like(s.mask)]), s.mask)
    # a longer request regenerates; the first samples stay the same
    longer = load_dataset("shapes", tmp_path, "test:8")
    assert [x.query for x in longer[:6]] == [x.query for x in shapes]


def test_a_split_drawn_by_another_generator_version_is_rewritten_with_a_warning(tmp_path):
    write_split(tmp_path / "test", "test", 4)
    info = tmp_path / "test" / "shapes.json"
    stored = json.loads(info.read_text())
    stored["config"]["version"] = VERSION - 1
    info.write_text(json.dumps(stored))
    manifest = tmp_path / "test" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"query": "', '"query": "stale '))  # what version 1 drew
    with pytest.warns(UserWarning, match=f"generator version {VERSION - 1}, this is version {VERSION}: rewriting"):
        samples = load_dataset("shapes", tmp_path, "test:3")
    assert [s.query for s in samples] == [generate("test", i).query for i in range(3)]
    assert json.loads(info.read_text())["config"]["version"] == VERSION


def test_cli_make_then_score_the_ground_truth_and_eval_the_oracle(tmp_path, capsys):
    out = tmp_path / "test"
    assert main(["shapes", "make", "--split", "test", "--n", "5", "--out", str(out)]) == 0
    preds = tmp_path / "preds"
    preds.mkdir()
    for line in (out / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        (preds / f"{rec['sample_id']}.png").write_bytes((out / rec["mask"]).read_bytes())
    assert main(["score", "--dataset", "manifest", "--root", str(out), "--predictions", str(preds),
                 "--out", str(tmp_path / "score"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "score" / "summary.json").read_text())
    assert summary["n"] == 5 and summary["gIoU"] == 1.0
    assert main(["eval", "--dataset", "shapes", "--root", str(tmp_path), "--split", "test:5", "--policy", "oracle",
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 5 and summary["failed"] == 0 and summary["gIoU"] > 0.7
    assert load_mask(out / "masks" / "test-000000.png").shape == (112, 112)
    # scenes a run on test:5 never saw, then more of them with --resume
    held_out = ["eval", "--dataset", "shapes", "--root", str(tmp_path), "--policy", "oracle",
                "--out", str(tmp_path / "held-out"), "--no-progress"]
    assert main([*held_out, "--split", "test:5-7"]) == 0
    assert main([*held_out, "--split", "test:5-9", "--resume"]) == 0
    ids = [json.loads(x)["sample_id"] for x in (tmp_path / "held-out" / "results.jsonl").read_text().splitlines()]
    assert ids[:2] == ["test-000005", "test-000006"] and sorted(ids) == [f"test-{i:06d}" for i in range(5, 9)]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["shapes", "make", "--split", "dev", "--out", str(tmp_path / "x")]) == 2
    assert "unknown shapes split" in capsys.readouterr().err
    assert main(["shapes", "make", "--split", "test:5-9", "--out", str(tmp_path / "x")]) == 2
    assert "writes samples 0..N-1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["eval", "--dataset", "manifest", "--policy", "oracle", "--out", str(tmp_path / "e")]) == 2
    assert "needs --root" in capsys.readouterr().err
