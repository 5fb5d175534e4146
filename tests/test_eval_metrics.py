"""Scoring protocols against numbers worked out by hand, and the results file's kill-safety."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rsagent.core.errors import RsagentError
from rsagent.core.mask import GroundTruth
from rsagent.eval.metrics import PROTOCOLS, aggregate, get_protocol
from rsagent.eval.results import ResultsError, ResultsWriter, read_results, safe_name


def _case():
    """A 4x5 target with a 2-pixel ignore region; the prediction overlaps target and ignore."""
    gt = np.zeros((6, 8), bool)
    gt[1:5, 1:6] = True                      # 20 target pixels
    ignore = np.zeros_like(gt)
    ignore[0:2, 6:8] = True                  # 4 ignore pixels, outside the target
    ignore[1, 1] = True                      # and one inside it (LISA's 255 wins over the target)
    pred = np.zeros_like(gt)
    pred[0:4, 3:8] = True                    # 20 predicted pixels
    return pred, GroundTruth(gt, ignore)


def test_lisa_removes_ignore_from_both_sides():
    pred, gt = _case()
    valid = ~gt.ignore
    p, g = pred & valid, gt.mask & valid
    inter, union = get_protocol("lisa").counts(pred, gt)
    assert (inter, union) == (int((p & g).sum()), int((p | g).sum())) == (9, 26)


def test_ignore_as_target_counts_ignore_pixels_as_target():
    pred, gt = _case()
    target = gt.mask | gt.ignore
    inter, union = get_protocol("ignore-as-target").counts(pred, gt)
    assert (inter, union) == (int((pred & target).sum()), int((pred | target).sum())) == (13, 31)


def test_empty_union_scores_one_and_drop_empty_leaves_it_out_of_giou():
    empty = GroundTruth(np.zeros((4, 4), bool))
    lisa = get_protocol("lisa")
    assert lisa.counts(np.zeros((4, 4), bool), empty) == (0, 0)
    assert lisa.sample_iou(0, 0) == 1.0
    records = [{"I": 0, "U": 0, "IoU": 1.0}, {"I": 1, "U": 4, "IoU": 0.25}, {"I": 3, "U": 4, "IoU": 0.75}]
    a = aggregate(records, lisa)
    assert a.pop("ci95")["resamples"] == 1000
    assert a == {"n": 3, "gIoU": pytest.approx(2.0 / 3, abs=1e-15), "cIoU": 0.5, "n_giou": 3,
                 "intersection": 4, "union": 8}
    d = aggregate(records, get_protocol("drop-empty"))
    assert d["n"] == 3 and d["n_giou"] == 2 and d["gIoU"] == 0.5 and d["cIoU"] == 0.5


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_samples():
    rng = np.random.default_rng(1)
    lisa = get_protocol("lisa")

    def records(n):
        u = rng.integers(50, 200, n)
        i = (u * rng.uniform(0, 1, n)).astype(int)
        return [{"I": int(a), "U": int(b), "IoU": a / b} for a, b in zip(i, u)]

    small, large = aggregate(records(40), lisa), aggregate(records(4000), lisa)
    for a in (small, large):
        lo, hi = a["ci95"]["gIoU"]
        assert lo < a["gIoU"] < hi
        lo, hi = a["ci95"]["cIoU"]
        assert lo < a["cIoU"] < hi
    width = lambda a: a["ci95"]["gIoU"][1] - a["ci95"]["gIoU"][0]  # noqa: E731
    assert width(large) < width(small) / 5  # ~1/sqrt(100) of it
    assert abs(width(large) - 2 * 1.96 * 0.2887 / np.sqrt(4000)) < 0.004  # uniform IoUs: sd 1/sqrt(12)
    assert aggregate(records(1), lisa)["ci95"]["gIoU"] is None


def test_sums_are_exact_integers_and_order_does_not_matter():
    rng = random.Random(0)
    # 40k samples of ~25 MP unions: sums far beyond float32's exact range (2**24)
    records = []
    for i in range(40000):
        u = rng.randrange(1, 25_000_000)
        inter = rng.randrange(0, u + 1)
        records.append({"sample_id": f"s{i}", "I": inter, "U": u, "IoU": inter / u})
    lisa = get_protocol("lisa")
    a = aggregate(records, lisa)
    assert a["intersection"] == sum(r["I"] for r in records) and a["union"] == sum(r["U"] for r in records)
    assert a["cIoU"] == a["intersection"] / a["union"]
    from fractions import Fraction

    exact = sum(Fraction(r["IoU"]) for r in records) / len(records)
    assert abs(a["gIoU"] - float(exact)) <= 1e-15
    rng.shuffle(records)
    assert aggregate(records, lisa) == a  # bit-identical in any order (fsum)


def test_no_samples_and_unknown_protocol():
    assert aggregate([], get_protocol("lisa"))["gIoU"] == 0.0
    assert set(PROTOCOLS) == {"lisa", "ignore-as-target", "drop-empty"}
    with pytest.raises(RsagentError, match="unknown protocol 'voc'"):
        get_protocol("voc")


# --- results.jsonl ---------------------------------------------------------------------------------
def test_append_read_and_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    with ResultsWriter(path) as w:
        w.append({"sample_id": "a", "I": 1, "U": 2, "IoU": 0.5})
        w.append({"sample_id": "b+c/d", "I": 0, "U": 0, "IoU": 1.0})
    good = path.read_bytes()
    assert good.count(b"\n") == 2 and good.endswith(b"\n")
    with open(path, "ab") as fh:  # what a kill in the middle of a write leaves
        fh.write(b'{"sample_id": "c", "I": 3')
    assert [r["sample_id"] for r in read_results(path)] == ["a", "b+c/d"]
    assert path.read_bytes() != good  # reading alone does not touch the file
    read_results(path, repair=True)
    assert path.read_bytes() == good  # repaired: the next append starts on a clean line
    with ResultsWriter(path) as w:
        w.append({"sample_id": "c", "I": 3, "U": 3, "IoU": 1.0})
    assert [r["sample_id"] for r in read_results(path)] == ["a", "b+c/d", "c"]


def test_broken_complete_last_line_is_dropped_but_a_broken_middle_line_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"sample_id": "a", "I": 1, "U": 1, "IoU": 1.0}) + "\n{\"sample_id\": \n")
    assert [r["sample_id"] for r in read_results(path, repair=True)] == ["a"]
    assert path.read_text().count("\n") == 1
    path.write_text("garbage\n" + json.dumps({"sample_id": "a", "I": 1, "U": 1, "IoU": 1.0}) + "\n")
    with pytest.raises(ResultsError, match="line 1 is not a result record"):
        read_results(path)


def test_safe_names_are_distinct_plain_file_names():
    ids = ["123-456", "a/b", "a%2Fb", "a+b", "..", ".hidden", "é", "x" * 400, "x" * 399 + "y", "", "a b"]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(names)
    assert safe_name("123-456") == "123-456" and safe_name("img_01.v2") == "img_01.v2"
    for name in names:
        assert "/" not in name and not name.startswith(".") and 0 < len(name) <= 150


def test_gallery_picks_worst_median_and_best():
    from rsagent.eval.report import select_gallery

    records = [{"sample_id": f"s{i:03d}", "IoU": i / 100} for i in range(100)]
    sections = select_gallery(records, 60)
    assert [title for title, _ in sections] == ["Worst", "Around the median", "Best"]
    worst, median, best = ([r["sample_id"] for r in recs] for _, recs in sections)
    assert worst == [f"s{i:03d}" for i in range(20)]
    assert median == [f"s{i:03d}" for i in range(40, 60)]
    assert best == [f"s{i:03d}" for i in range(99, 79, -1)]
    assert select_gallery(records[:7], 60) == [("All samples, worst first", records[:7])]
    assert select_gallery(records, 0) == []


def _records(ious_i_u: list[tuple[float, int, int]], prefix: str = "s") -> list[dict]:
    return [{"sample_id": f"{prefix}{k}", "IoU": iou, "I": i, "U": u, "status": "ok"}
            for k, (iou, i, u) in enumerate(ious_i_u)]


def test_paired_difference_numbers_and_errors():
    from rsagent.core.errors import RsagentError
    from rsagent.eval.metrics import PROTOCOLS, paired_difference

    a = _records([(0.5, 5, 10), (0.0, 0, 10), (1.0, 0, 0), (0.25, 1, 4)])
    b = _records([(0.8, 8, 10), (0.0, 0, 10), (1.0, 0, 0), (0.5, 2, 4)])
    out = paired_difference(a, list(reversed(b)), PROTOCOLS["lisa"], resamples=500)
    assert out["gIoU"]["a"] == pytest.approx(1.75 / 4) and out["gIoU"]["b"] == pytest.approx(2.3 / 4)
    assert out["gIoU"]["diff"] == pytest.approx(0.55 / 4)
    assert out["cIoU"]["a"] == pytest.approx(6 / 24) and out["cIoU"]["b"] == pytest.approx(10 / 24)
    lo, hi = out["gIoU"]["ci95"]
    assert 0 <= lo <= out["gIoU"]["diff"] <= hi <= 0.3 / 1 + 1e-9  # B never scores lower on any sample
    assert out["samples"] == {"b_higher": 2, "b_lower": 0, "same": 2}
    same = paired_difference(a, a, PROTOCOLS["lisa"], resamples=200)
    assert same["gIoU"]["diff"] == 0 and same["gIoU"]["ci95"] == [0.0, 0.0]
    with pytest.raises(RsagentError, match="different samples"):
        paired_difference(a, _records([(0.5, 5, 10)] * 4, prefix="t"), PROTOCOLS["lisa"])
