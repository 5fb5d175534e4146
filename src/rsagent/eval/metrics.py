"""Scoring protocols: how one prediction is counted against its ground truth, and how samples add up.

The default, `lisa`, is LISA's protocol exactly (dvlab-research/LISA, `utils/utils.py::
intersectionAndUnionGPU` and `train_ds.py::validate`): per sample, I and U over foreground pixels
with ground-truth ignore pixels removed from both the prediction and the ground truth; IoU = I / U,
and 1.0 when U = 0; gIoU = the mean of the per-sample IoUs; cIoU = sum of I / sum of U. The other
protocols reproduce conventions seen in other codebases, only when asked for by name
(docs/evaluation.md). I and U are Python ints (no float32 accumulation), and means use `math.fsum`,
so results do not depend on the order in which samples finished.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.core.mask import GroundTruth, intersection_union, iou_from_counts


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    ignore_as_target: bool = False  # ignore pixels count as target (a label map binarised with > 0)
    drop_empty: bool = False  # samples with U == 0 are left out of gIoU (still counted in n)

    def counts(self, pred: np.ndarray, gt: GroundTruth) -> tuple[int, int]:
        """I and U of one prediction (bool, the image's size) under this protocol."""
        if self.ignore_as_target and gt.ignore is not None:
            gt = GroundTruth(gt.mask | gt.ignore)
        return intersection_union(pred, gt)

    def sample_iou(self, inter: int, union: int) -> float:
        """The per-sample IoU that results.jsonl records (1.0 for an empty union, as in LISA)."""
        return iou_from_counts(inter, union)

    def in_giou(self, union: int) -> bool:
        """Whether a sample with this union enters the gIoU mean."""
        return not (self.drop_empty and union == 0)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description}


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("lisa", "LISA: ignore pixels removed from prediction and ground truth; IoU = 1 when U = 0; "
                     "gIoU = mean IoU over all samples; cIoU = sum I / sum U"),
    Protocol("ignore-as-target", "ignore pixels count as target (the label map binarised with > 0); "
                                 "otherwise as lisa", ignore_as_target=True),
    Protocol("drop-empty", "as lisa, but samples with an empty union (U = 0) are left out of the gIoU mean "
                           "(they still count in n and in cIoU, where they add nothing)", drop_empty=True),
)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise RsagentError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def aggregate(records: Iterable[dict], protocol: Protocol) -> dict:
    """n, gIoU, cIoU and the integer sums from per-sample records ({"I", "U", "IoU"}).

    gIoU is 0.0 when there is nothing to average (no samples; under drop-empty, no non-empty union).
    cIoU is 0.0 when the sum of U is 0, as LISA's sum I / (sum U + 1e-10) gives.
    """
    records = list(records)
    total_i = sum(int(r["I"]) for r in records)
    total_u = sum(int(r["U"]) for r in records)
    scored = [float(r["IoU"]) for r in records if protocol.in_giou(int(r["U"]))]
    giou = math.fsum(scored) / len(scored) if scored else 0.0
    ciou = total_i / total_u if total_u else 0.0
    return {"n": len(records), "gIoU": giou, "cIoU": ciou, "n_giou": len(scored),
            "intersection": total_i, "union": total_u, "ci95": bootstrap_ci(records, protocol)}


def bootstrap_ci(records: list[dict], protocol: Protocol, resamples: int = 1000, seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals of gIoU and cIoU over samples (resampled with replacement, a
    fixed seed, records in a canonical order: the same records in any order give the same interval);
    None for fewer than 2 samples."""
    if len(records) < 2:
        return {"gIoU": None, "cIoU": None, "resamples": 0}
    rows = sorted((int(r["I"]), int(r["U"]), float(r["IoU"])) for r in records)
    inter, union, ious = (np.array(col, np.float64) for col in zip(*rows))
    counted = np.array([protocol.in_giou(int(u)) for u in union], np.float64)
    rng = np.random.default_rng(seed)
    giou, ciou = [], []
    for start in range(0, resamples, 100):  # in chunks: a (resamples x n) index array can be large
        picks = rng.integers(0, len(rows), (min(100, resamples - start), len(rows)))
        n_scored, total_u = counted[picks].sum(1), union[picks].sum(1)
        giou.append(np.divide((ious * counted)[picks].sum(1), n_scored, out=np.zeros(len(picks)), where=n_scored > 0))
        ciou.append(np.divide(inter[picks].sum(1), total_u, out=np.zeros(len(picks)), where=total_u > 0))
    return {"gIoU": [float(v) for v in np.percentile(np.concatenate(giou), [2.5, 97.5])],
            "cIoU": [float(v) for v in np.percentile(np.concatenate(ciou), [2.5, 97.5])], "resamples": resamples}


def paired_difference(a: list[dict], b: list[dict], protocol: Protocol, resamples: int = 2000, seed: int = 0) -> dict:
    """B minus A on the same samples (matched by sample_id): gIoU and cIoU of each, their difference and
    its 95% paired percentile-bootstrap interval (the same resampled samples for both sides), and how
    many samples B scores higher, lower and the same. Different sample sets are an error."""
    by_a = {r["sample_id"]: r for r in a}
    by_b = {r["sample_id"]: r for r in b}
    if set(by_a) != set(by_b):
        only_a, only_b = sorted(set(by_a) - set(by_b)), sorted(set(by_b) - set(by_a))
        raise RsagentError(f"the runs scored different samples ({len(only_a)} only in the first, e.g. "
                           f"{only_a[:3]}; {len(only_b)} only in the second, e.g. {only_b[:3]})")
    ids = sorted(by_a)
    if len(ids) < 2:
        raise RsagentError("a paired comparison needs at least 2 samples in both runs")

    def columns(by: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rows = [by[i] for i in ids]
        union = np.array([int(r["U"]) for r in rows], np.float64)
        return (np.array([int(r["I"]) for r in rows], np.float64), union,
                np.array([float(r["IoU"]) for r in rows], np.float64),
                np.array([protocol.in_giou(int(u)) for u in union], np.float64))

    cols_a, cols_b = columns(by_a), columns(by_b)

    def scores(cols, picks):
        inter, union, ious, counted = cols
        n_scored, total_u = counted[picks].sum(-1), union[picks].sum(-1)
        giou = np.divide((ious * counted)[picks].sum(-1), n_scored, out=np.zeros(np.shape(n_scored)), where=n_scored > 0)
        ciou = np.divide(inter[picks].sum(-1), total_u, out=np.zeros(np.shape(total_u)), where=total_u > 0)
        return giou, ciou

    full = np.arange(len(ids))[None]
    (ga, ca), (gb, cb) = scores(cols_a, full), scores(cols_b, full)
    rng = np.random.default_rng(seed)
    dg, dc = [], []
    for start in range(0, resamples, 100):
        picks = rng.integers(0, len(ids), (min(100, resamples - start), len(ids)))
        (ra, rca), (rb, rcb) = scores(cols_a, picks), scores(cols_b, picks)
        dg.append(rb - ra)
        dc.append(rcb - rca)
    diff = cols_b[2] - cols_a[2]
    return {"n": len(ids), "resamples": resamples, "protocol": protocol.name,
            "gIoU": {"a": float(ga[0]), "b": float(gb[0]), "diff": float(gb[0] - ga[0]),
                     "ci95": [float(v) for v in np.percentile(np.concatenate(dg), [2.5, 97.5])]},
            "cIoU": {"a": float(ca[0]), "b": float(cb[0]), "diff": float(cb[0] - ca[0]),
                     "ci95": [float(v) for v in np.percentile(np.concatenate(dc), [2.5, 97.5])]},
            "samples": {"b_higher": int((diff > 1e-12).sum()), "b_lower": int((diff < -1e-12).sum()),
                        "same": int((np.abs(diff) <= 1e-12).sum())}}
