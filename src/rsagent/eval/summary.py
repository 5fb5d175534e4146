"""summary.json: the numbers of a run, and what is needed to reproduce it.

Everything outside the `run` key is a function of the set of per-sample records and the run's
configuration only: records are sorted by sample id and float means use `math.fsum`, so a resumed
run, a sharded (Ray) run and an uninterrupted local run give identical values. The `run` key holds
what legitimately differs between invocations (argv, executor, workers, wall-clock times).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
import platform
import statistics
import subprocess
from collections import Counter
from pathlib import Path

from rsagent.eval.metrics import Protocol, aggregate

# Keys of summary.json that differ between invocations of the same run (not compared on resume).
RUN_KEY = "run"
_PACKAGES = ("numpy", "pillow", "opencv-contrib-python-headless", "opencv-python-headless", "opencv-python",
             "scipy", "PyMaxflow", "pycocotools", "torch", "transformers", "ray")


def comparable(summary: dict) -> dict:
    """The part of a summary that a resumed or sharded run must reproduce exactly."""
    return {k: v for k, v in summary.items() if k != RUN_KEY}


def package_versions() -> dict:
    """Versions of Python, rsagent and the packages that decide the numbers (those installed)."""
    from rsagent import __version__

    out = {"python": platform.python_version(), "platform": platform.platform(terse=True), "rsagent": __version__}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> dict | None:
    """{"revision", "dirty"} of the git checkout rsagent runs from; None for an installed copy.

    `dirty` considers tracked files only (run outputs inside the checkout do not count).
    """
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top:
        return None
    pyproject = Path(top) / "pyproject.toml"
    try:
        if 'name = "rsagent"' not in pyproject.read_text(encoding="utf-8"):
            return None  # rsagent installed inside someone else's repository
    except OSError:
        return None
    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "dirty": None if status is None else bool(status)}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def episode_stats(records: list[dict], max_turns: int | None) -> dict:
    """Per-turn IoU, tool calls, invalid (and among them malformed) calls, turns used and end reasons of episode records.

    `per_turn.iou[k - 1]` is the mean over all n samples of the IoU of the answer after turn k; an
    episode that ended earlier (or never ran) contributes its final, scored IoU, so the last entry
    equals gIoU under the lisa and ignore-as-target protocols. `per_turn.active[k - 1]` counts the
    episodes that played a turn k.
    """
    depth = max([max_turns or 0] + [len(r.get("turn_iou") or []) for r in records])
    per_turn, active = [], []
    for k in range(depth):
        values = []
        playing = 0
        for r in records:
            turn_iou = r.get("turn_iou") or []
            if k < len(turn_iou):
                playing += 1
                # a failed episode's turns show what it had; once it is over its scored IoU holds
                values.append(float(turn_iou[k]))
            else:
                values.append(float(r["IoU"]))
        per_turn.append(_mean(values))
        active.append(playing)
    calls: Counter = Counter()
    for r in records:
        calls.update(r.get("tools") or {})
    total_turns = sum(int(r.get("turns") or 0) for r in records)
    invalid = sum(int(r.get("invalid") or 0) for r in records)
    malformed = sum(int(r.get("malformed") or 0) for r in records)
    n = len(records)
    histogram = Counter(int(r.get("turns") or 0) for r in records)
    return {
        "per_turn": {"iou": per_turn, "active": active},
        "tools": {"calls": dict(sorted(calls.items())),
                  "calls_per_sample": {k: v / n for k, v in sorted(calls.items())} if n else {},
                  "invalid": invalid, "total_turns": total_turns,
                  "invalid_rate": invalid / total_turns if total_turns else 0.0,
                  # of the invalid: no parseable call, or arguments off the tool's schema
                  "malformed": malformed, "malformed_rate": malformed / total_turns if total_turns else 0.0},
        "turns": {"mean": total_turns / n if n else 0.0,
                  "histogram": {str(k): histogram[k] for k in sorted(histogram)}},
        "end_reasons": dict(sorted(Counter(r.get("end") or "none" for r in records).items())),
    }


def build_summary(records: list[dict], protocol: Protocol, *, kind: str, reproduce: dict, run: dict,
                  max_turns: int | None = None) -> dict:
    """summary.json from the records of every sample of the run (any order)."""
    records = sorted(records, key=lambda r: r["sample_id"])
    core = aggregate(records, protocol)
    not_ok = [r for r in records if r["status"] != "ok"]
    summary: dict = {
        "kind": kind,
        "protocol": protocol.to_dict(),
        **core,
        "failed": len(not_ok),
        "failed_ids": [r["sample_id"] for r in not_ok],
        "status": dict(sorted(Counter(r["status"] for r in records).items())),
        "missing": [r["sample_id"] for r in records if r["status"] == "missing"],
        "unreadable": [r["sample_id"] for r in records if r["status"] == "unreadable"],
    }
    if kind == "eval":
        summary.update(episode_stats(records, max_turns))
    else:
        summary.update({"per_turn": None, "tools": None, "turns": None, "end_reasons": None})
    summary["reproduce"] = reproduce
    seconds = [float(r.get("seconds") or 0.0) for r in records]
    summary[RUN_KEY] = {
        **run,
        "seconds_per_sample": {"mean": _mean(seconds), "median": statistics.median(seconds) if seconds else 0.0,
                               "max": max(seconds, default=0.0), "total": math.fsum(seconds)},
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return summary
