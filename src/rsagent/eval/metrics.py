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
