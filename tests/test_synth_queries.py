"""Generated queries: hand-built instance lists with known answers, and a property check over every image
of both real instance sources (each query resolves to exactly its targets; the same seed, the same
queries); `InstanceImage.mask` against the eval loaders' ground truth."""

from __future__ import annotations

import collections
import json
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from rsagent.core.errors import RsagentError
from rsagent.data import load_dataset
from rsagent.data.instances import Instance, InstanceImage, load_instance_images
from rsagent.synth.affordances import USES
from rsagent.synth.queries import KINDS, QueryConfig, generate_queries, neighbour, resolve

MINI_JSON = "annotations/instances_val2017_subset.json"
ALL = QueryConfig(per_target=50, reasoning_share=1.0, group_share=1.0, absent_rate=0.0, max_per_image=None)


def image(*objects, size=(1000, 1000)) -> InstanceImage:
    """objects: (category, (x0, y0, x1, y1)) or (category, box, "crowd"); area = the box's area."""
    insts = tuple(Instance(k, cat, tuple(map(float, box)), float((box[2] - box[0]) * (box[3] - box[1])),
                           crowd=bool(rest))
                  for k, (cat, box, *rest) in enumerate(objects))
    return InstanceImage("test", Path("test.jpg"), size[0], size[1], insts, "test")


def specs(img: InstanceImage, config: QueryConfig = ALL, seed: int = 0) -> dict[str, tuple]:
    """Every generated query as {json spec: targets}, checked to resolve to its targets."""
    out = {}
    for q in generate_queries(img, random.Random(seed), config):
        assert resolve(q.spec, img) == set(q.targets), q
        out[json.dumps(q.spec, sort_keys=True)] = q.targets
    return out


def key(**spec) -> str:
    return json.dumps(spec, sort_keys=True)


# --- hand-built images ---------------------------------------------------------------------------------
def test_three_people_left_middle_right():
    img = image(("person", (100, 300, 200, 700)), ("person", (450, 300, 550, 700)), ("person", (800, 300, 900, 700)),
                ("dog", (460, 710, 540, 800)))
    assert resolve({"type": "position", "category": "person", "side": "left"}, img) == {0}
    assert resolve({"type": "position", "category": "person", "side": "right"}, img) == {2}
    assert resolve({"type": "ordinal", "category": "person", "n": 2, "from": "left"}, img) == {1}
    assert resolve({"type": "ordinal", "category": "person", "n": 4, "from": "left"}, img) == set()
    assert resolve({"type": "position", "category": "person", "side": "top"}, img) == {0, 1, 2}  # all level
    assert resolve({"type": "category", "category": "person"}, img) == {0, 1, 2}
    found = specs(img)
    assert found[key(type="position", category="person", side="left")] == (0,)
    assert found[key(type="position", category="person", side="right")] == (2,)
    assert found[key(type="ordinal", category="person", n=2, **{"from": "left"})] == (1,)
    assert found[key(type="relation", category="person", relation="above", anchor="dog")] == (1,)
    assert key(type="category", category="person") in found and found[key(type="category", category="dog")] == (3,)
    texts = {q.text for q in generate_queries(img, random.Random(0), ALL) if q.targets == (0,)}
    assert any("left" in t for t in texts)


def test_overlapping_people_are_not_ordered():
    # centres 200 and 280: the left one's centre is inside the other's box, so neither is clearly left
    img = image(("person", (100, 100, 300, 900)), ("person", (180, 100, 380, 900)))
    assert resolve({"type": "position", "category": "person", "side": "left"}, img) == {0, 1}
    assert not any(json.loads(k)["type"] in ("position", "ordinal") for k in specs(img))


def test_sizes_need_a_clear_ratio():
    pair = image(("person", (100, 100, 300, 500)), ("person", (600, 100, 800, 500)))
    assert not any(json.loads(k)["type"] == "size" for k in specs(pair))
    big = image(("person", (100, 100, 300, 500)), ("person", (600, 100, 800, 500)), ("person", (350, 50, 590, 950)))
    found = specs(big)
    assert found[key(type="size", category="person", extreme="largest")] == (2,)
    assert key(type="size", category="person", extreme="smallest") not in found  # the equal pair ties
    assert resolve({"type": "size", "category": "person", "extreme": "smallest"}, big) == {0, 1}


def test_relations():
    img = image(("cup", (100, 400, 160, 480)), ("laptop", (300, 300, 700, 600)), ("cup", (850, 420, 910, 500)),
                ("dog", (100, 700, 300, 900)), ("bench", (310, 650, 700, 950)), ("dog", (800, 50, 950, 200)))
    rel = {"type": "relation", "category": "cup", "anchor": "laptop"}
    assert resolve({**rel, "relation": "left of"}, img) == {0}
    assert resolve({**rel, "relation": "right of"}, img) == {2}
    assert resolve({**rel, "relation": "above"}, img) == set()
    assert resolve({"type": "relation", "category": "dog", "relation": "next to", "anchor": "bench"}, img) == {3}
    found = specs(img)
    assert found[key(type="relation", category="cup", relation="left of", anchor="laptop")] == (0,)
    assert found[key(type="relation", category="dog", relation="next to", anchor="bench")] == (3,)
    # a third cup just left of the laptop's centre could be meant too; two laptops: no anchor at all
    doubt = image(*[(i.category, i.box) for i in img.instances], ("cup", (320, 420, 380, 480)))
    assert resolve({**rel, "relation": "left of"}, doubt) == {0, 6}
    two = image(*[(i.category, i.box) for i in img.instances], ("laptop", (300, 50, 500, 200)))
    assert resolve({**rel, "relation": "left of"}, two) == set()


def test_reasoning_one_seat_or_a_group_of_seats():
    one = image(("chair", (100, 500, 300, 900)), ("dining table", (350, 500, 900, 900)), ("cup", (500, 450, 560, 520)))
    found = specs(one)
    assert found[key(type="affordance", use="sit on", group=False)] == (0,)
    kinds = {q.kind for q in generate_queries(one, random.Random(0), ALL)}
    assert "reasoning" in kinds
    several = image(("chair", (100, 500, 300, 900)), ("chair", (700, 500, 900, 900)), ("couch", (320, 500, 680, 900)))
    found = specs(several)
    assert key(type="affordance", use="sit on", group=False) not in found
    assert found[key(type="affordance", use="sit on", group=True)] == (0, 1, 2)
    groups = [q for q in generate_queries(several, random.Random(0), ALL) if q.kind == "group"]
    assert {q.targets for q in groups} >= {(0, 1, 2), (0, 1)}  # every seat; all the chairs
    # a bed might count as a seat: the group is not well defined any more
    with_bed = image(*[(i.category, i.box) for i in several.instances], ("bed", (0, 0, 400, 300)))
    assert key(type="affordance", use="sit on", group=True) not in specs(with_bed)


def test_crowds_and_tiny_instances_count_but_are_never_targets():
    img = image(("person", (100, 100, 300, 800)), ("person", (600, 0, 1000, 500), "crowd"),
                ("cup", (500, 800, 700, 950)), ("cup", (900, 900, 920, 920)))  # the second cup: 400 px < 0.2 %
    queries = generate_queries(img, random.Random(0), ALL)
    targeted = {t for q in queries for t in q.targets}
    assert 1 not in targeted and 3 not in targeted and 0 not in targeted  # no person is referred to at all
    assert not any(q.spec.get("category") == "person" for q in queries)
    assert resolve({"type": "category", "category": "cup"}, img) == {2, 3}
    assert resolve({"type": "size", "category": "cup", "extreme": "largest"}, img) == {2}
    assert 2 in targeted


def test_absent_queries_name_nothing_in_the_image():
    img = image(("car", (100, 100, 400, 300)), ("person", (500, 100, 600, 500)), ("chair", (700, 600, 800, 800)))
    config = QueryConfig(absent_rate=0.6, max_per_image=None)
    absent = [q for seed in range(30) for q in generate_queries(img, random.Random(seed), config) if q.kind == "absent"]
    assert len(absent) > 20
    present = {i.category for i in img.instances}
    for q in absent:
        assert q.targets == () and resolve(q.spec, img) == set()
        names = {q.spec["category"]} if "category" in q.spec else USES[q.spec["use"]].categories
        assert not names & present
    assert not any(q.spec.get("category") in ("truck", "bus", "couch") for q in absent)  # look-alikes of what is there


def test_neighbour():
    img = image(("cup", (100, 100, 200, 200)), ("cup", (800, 800, 900, 900)), ("cup", (300, 100, 400, 200)),
                ("bowl", (190, 150, 300, 260)), ("person", (0, 0, 120, 120), "crowd"), ("cup", (210, 210, 212, 212)))
    assert neighbour(img, (0,)) == 2  # the nearest other cup (the tiny one and the crowd never)
    assert neighbour(img, (0, 2)) == 1
    assert neighbour(img, (0, 1, 2)) == 3  # no other cup big enough: the bowl overlapping cup 0
    lonely = image(("dog", (100, 100, 300, 300)), ("bench", (290, 250, 600, 400)), ("car", (700, 700, 800, 800)))
    assert neighbour(lonely, (0,)) == 1 and neighbour(lonely, (2,)) is None and neighbour(lonely, ()) is None


def test_determinism_and_config_checks():
    img = image(("person", (100, 300, 200, 700)), ("person", (450, 300, 550, 700)), ("person", (800, 300, 900, 700)),
                ("bench", (300, 650, 700, 900)), ("umbrella", (420, 100, 600, 280)))
    assert generate_queries(img, random.Random(3)) == generate_queries(img, random.Random(3))
    texts = {tuple(q.text for q in generate_queries(img, random.Random(s))) for s in range(8)}
    assert len(texts) > 1
    for bad in ({"per_target": 0}, {"absent_rate": 1.0}, {"group_share": 1.5}, {"max_per_image": 0}):
        with pytest.raises(RsagentError):
            QueryConfig(**bad)


# --- the real instance sources -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_images(shared_data: Path) -> list[InstanceImage]:
    return load_instance_images("coco", shared_data / "coco-val2017-mini", "val2017", annotations=MINI_JSON)


@pytest.fixture(scope="module")
def yolo_images(coco128_root: Path) -> list[InstanceImage]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # two label files without an image
        return load_instance_images("yoloseg", coco128_root)


def test_every_query_of_the_real_images_resolves_to_its_targets(coco_images, yolo_images, capsys):
    config = QueryConfig()
    counts: collections.Counter = collections.Counter()
    for img in coco_images + yolo_images:
        min_area = config.min_target_fraction * img.width * img.height
        for seed in (0, 1, 2):
            queries = generate_queries(img, random.Random(seed), config)
            assert queries == generate_queries(img, random.Random(seed), config)
            for q in queries:
                assert q.kind in KINDS and resolve(q.spec, img) == set(q.targets), (img.image_id, q)
                assert (q.kind == "absent") == (q.targets == ())
                assert all(not img.instances[t].crowd and img.instances[t].area >= min_area for t in q.targets)
                assert json.loads(json.dumps(q.spec)) == q.spec
                counts[q.kind] += 1
    total = sum(counts.values())
    with capsys.disabled():
        print(f"\nqueries over {len(coco_images) + len(yolo_images)} images x 3 seeds: {total} "
              + ", ".join(f"{k} {counts[k]} ({counts[k] / total:.1%})" for k in KINDS))
    assert all(counts[k] > 0 for k in KINDS)
    assert 0.02 < counts["absent"] / total < 0.09


def test_mask_equals_the_eval_ground_truth_coco(coco_images, shared_data: Path):
    root = shared_data / "coco-val2017-mini"
    samples = {s.meta["ann_id"]: s for s in load_dataset("coco", root, "val2017", annotations=MINI_JSON)}
    api = COCO(str(root / MINI_JSON))
    crowds = 0
    for img in coco_images:
        img = pickle.loads(pickle.dumps(img))  # what a worker process receives
        for inst in img.instances:
            mask = img.mask(inst.index)
            if inst.crowd:  # no sample of its own: pycocotools' decoding is the reference
                crowds += 1
                assert np.array_equal(mask, api.annToMask(api.loadAnns(inst.ann_id)[0]).astype(bool))
                continue
            sample = samples[inst.ann_id]
            assert sample.image_path == img.image_path and inst.category == sample.query
            assert np.array_equal(mask, sample.load_gt(img.height, img.width).mask), inst.ann_id
    assert crowds == 1 and len(samples) == sum(len(i.instances) for i in coco_images) - 1


def test_mask_equals_the_eval_ground_truth_yoloseg(yolo_images, coco128_root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        samples = {s.sample_id: s for s in load_dataset("yoloseg", coco128_root)}
    assert len(samples) == sum(len(i.instances) for i in yolo_images)
    for img in yolo_images[::3]:  # every third image: the same code for all
        img = pickle.loads(pickle.dumps(img))
        for inst in img.instances:
            sample = samples[f"{img.image_id}-{inst.ann_id}"]
            assert sample.query == f"the {inst.category}"
            assert np.array_equal(img.mask(inst.index), sample.load_gt(img.height, img.width).mask)
