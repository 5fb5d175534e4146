"""Evaluation: one documented scoring protocol (LISA's by default), runs that never lose or drop a
sample, summaries and reports. See docs/evaluation.md."""

from rsagent.eval.metrics import PROTOCOLS, Protocol, aggregate, get_protocol
from rsagent.eval.results import read_results, safe_name
from rsagent.eval.run import DatasetSpec, EpisodeWorker, evaluate, score
from rsagent.eval.summary import comparable

__all__ = ["PROTOCOLS", "DatasetSpec", "EpisodeWorker", "Protocol", "aggregate", "comparable", "evaluate",
           "get_protocol", "read_results", "safe_name", "score"]
