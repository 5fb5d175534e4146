"""An evaluation, score or synthesis folder as the Browse tab reads it: its summary numbers, its
per-sample records (ordered and filtered), and each sample's trajectory and source image. Every file
is reached through `BrowseRoots.resolve`, so nothing outside the browse folders is read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.core.trajectory import Trajectory
from rsagent.eval.report import fmt
from rsagent.eval.results import RESULTS, read_results, safe_name
from rsagent.web.limits import UploadLimits, check_trajectory, read_image
from rsagent.web.paths import BrowseRoots, PathRefused

ORDERS = ("IoU, lowest first", "IoU, highest first", "sample id")
SHOW = ("all", "failures", "IoU below 0.5")
GOOD_STATUS = ("ok", "accepted")  # eval's and synthesis' status of a sample that did not fail


@dataclass
class RunFolder:
    path: Path
    kind: str  # "eval", "score", "synth" (or whatever run.json says)
    summary: dict  # summary.json, or stats.json for synthesis; {} while a run is unfinished
    records: list[dict]

    @classmethod
    def open(cls, folder: str | Path, roots: BrowseRoots) -> RunFolder:
        path = roots.resolve(folder)
        if not path.is_dir():
            raise PathRefused(f"{folder}: not a folder")
        results = roots.resolve(path / RESULTS) if (path / RESULTS).exists() else None
        if results is None:
            raise RsagentError(f"{folder}: no {RESULTS} here; choose an evaluation or synthesis folder")
        records = read_results(results)
        summary, kind = {}, None
        for name in ("summary.json", "stats.json", "run.json"):
            if (path / name).exists():
                data = _read_json(roots.resolve(path / name))
                if name == "run.json":
                    kind = kind or data.get("kind")
                else:
                    summary = summary or data
                    kind = kind or (data.get("kind") if name == "summary.json" else "synth")
        return cls(path, kind or "run", summary, records)

    def episodes(self, order: str = ORDERS[0], show: str = SHOW[0]) -> list[dict]:
        """The records to page through: filtered by `show`, sorted by `order` (ties by sample id)."""
        chosen = self.records
        if show == "failures":
            chosen = [r for r in chosen if r.get("status") not in GOOD_STATUS]
        elif show == "IoU below 0.5":
            chosen = [r for r in chosen if _iou(r) < 0.5]
        if order == "sample id":
            return sorted(chosen, key=lambda r: r["sample_id"])
        sign = -1 if order == "IoU, highest first" else 1
        return sorted(chosen, key=lambda r: (sign * _iou(r), r["sample_id"]))

    def trajectory(self, record: dict, roots: BrowseRoots, limits: UploadLimits) -> Trajectory | None:
        """The sample's trajectories/<name>.json, or None when the run kept none (score runs, failures)."""
        path = self.path / "trajectories" / f"{safe_name(record['sample_id'])}.json"
        if not path.exists() and not path.is_symlink():
            return None
        traj = Trajectory.from_dict(_read_json(roots.resolve(path)))
        check_trajectory(traj, limits, f"trajectory of {record['sample_id']}")
        return traj

    def summary_rows(self) -> list[tuple[str, str]]:
        """The folder's headline numbers, as (name, value) text."""
        s, rows = self.summary, [("folder", str(self.path)), ("kind", self.kind)]
        if self.kind == "synth" and s:
            rate = f" ({100 * s['acceptance_rate']:.1f}%)" if s.get("acceptance_rate") is not None else ""
            iou = s.get("iou") or {}
            return rows + [("items", fmt(s.get("items"))), ("accepted", f"{fmt(s.get('accepted'))}{rate}"),
                           ("rejected", fmt(s.get("rejected"))),
                           ("final IoU, ran / accepted", f"{fmt((iou.get('ran') or {}).get('mean'))} / "
                                                         f"{fmt((iou.get('accepted') or {}).get('mean'))}"),
                           ("turns per accepted (mean)", fmt((s.get("turns") or {}).get("mean"), 2)),
                           ("reject reasons", ", ".join(f"{k} {v}" for k, v in (s.get("reject_reasons") or {}).items()
                                                        if v) or "-")]
        if s and "gIoU" in s:
            rows += [("samples (n)", fmt(s.get("n"))), ("gIoU", fmt(s.get("gIoU"))), ("cIoU", fmt(s.get("cIoU"))),
                     ("failed", fmt(s.get("failed")))]
            if s.get("turns"):
                tools = s.get("tools") or {}
                rows += [("turns used (mean)", fmt(s["turns"].get("mean"), 2)),
                         ("invalid calls", f"{100 * float(tools.get('invalid_rate') or 0):.1f}% of turns"),
                         ("end reasons", ", ".join(f"{k} {v}" for k, v in (s.get("end_reasons") or {}).items()))]
            reproduce = s.get("reproduce") or {}
            models = reproduce.get("models") or {}
            dataset = (reproduce.get("config") or {}).get("dataset") or {}
            named = " ".join(str(dataset.get(k) or "") for k in ("name", "split")).strip()
            rows += [(k, str(v)) for k, v in (("policy", models.get("policy")), ("segmenter", models.get("segmenter")),
                                              ("dataset", named)) if v]
            return rows
        # unfinished (or unknown) runs: what the records say so far
        ious = [_iou(r) for r in self.records]
        mean = sum(ious) / len(ious) if ious else None
        return rows + [("samples so far", str(len(self.records))), ("mean IoU so far", fmt(mean)),
                       ("failures", str(sum(r.get("status") not in GOOD_STATUS for r in self.records)))]


def record_facts(record: dict) -> list[tuple[str, str]]:
    """What a result line says about its sample, as (name, value) text."""
    facts = [("sample", record["sample_id"]), ("status", str(record.get("status"))), ("IoU", fmt(_iou(record))),
             ("turns", fmt(record.get("turns")))]
    for key in ("end", "reject", "kind", "opening", "error"):
        if record.get(key):
            facts.append((key, str(record[key])[:300]))
    return facts


def source_image(path: str | None, roots: BrowseRoots, limits: UploadLimits) -> tuple[np.ndarray | None, str | None]:
    """The trajectory's source image, read only when it lies inside the browse folders: (pixels, None),
    or (None, why not)."""
    if not path:
        return None, "the trajectory names no source image"
    try:
        return read_image(roots.resolve(path), limits, "the source image"), None
    except RsagentError as exc:
        return None, f"source image not shown ({exc}); masks are drawn on grey (add its folder with --browse)"


def _iou(record: dict) -> float:
    try:
        return float(record.get("IoU") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RsagentError(f"{path.name}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise RsagentError(f"{path.name}: not a JSON object")
    return data
