"""Two runs on the same samples, compared sample by sample (`rsagent compare A B`)."""

from __future__ import annotations

import json
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.eval.metrics import get_protocol, paired_difference
from rsagent.eval.results import read_results

RESULTS, SUMMARY = "results.jsonl", "summary.json"


def _run(folder: str | Path) -> tuple[list[dict], str]:
    folder = Path(folder)
    summary, results = folder / SUMMARY, folder / RESULTS
    if not results.is_file() or not summary.is_file():
        raise RsagentError(f"{folder}: not a finished `rsagent eval` / `score` folder (needs {RESULTS} and {SUMMARY})")
    protocol = (json.loads(summary.read_text()).get("protocol") or {}).get("name", "lisa")
    return read_results(results), protocol


def compare_runs(a: str | Path, b: str | Path, resamples: int = 2000, seed: int = 0) -> dict:
    """`metrics.paired_difference` of the two folders' per-sample results, which must be scored under one
    protocol; the folders are named in the result."""
    records_a, protocol_a = _run(a)
    records_b, protocol_b = _run(b)
    if protocol_a != protocol_b:
        raise RsagentError(f"{a} was scored under {protocol_a}, {b} under {protocol_b}: compare like with like")
    result = paired_difference(records_a, records_b, get_protocol(protocol_a), resamples=resamples, seed=seed)
    return {"a": str(a), "b": str(b), **result}
