"""Evaluation runs: episodes over a dataset (`evaluate`) or masks made by any method (`score`).

Both write, under the output folder:

- `results.jsonl`: one line per sample, appended and synced as soon as the sample is done;
- `run.json`: the run's configuration (checked on --resume) and its invocations;
- `summary.json` (see rsagent.eval.summary) and `report.html` (rsagent.eval.report);
- eval only: `trajectories/<name>.json` and `masks/<name>.png` (0/255) per sample, written
  before its result line, with `<name>` = `safe_name(sample_id)`.

Every sample of the dataset gets exactly one result: an episode that crashes, an image or a ground
truth that cannot be loaded, a prediction that is missing or unreadable: each is scored with an
empty prediction and counted. Work is distributed in chunks of `batch_size` samples, in-process,
over local processes (`workers > 1`) or over Ray actors; each worker holds one policy and one
segmenter and lists the dataset itself, and only the driver writes the output files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rsagent.core.errors import DatasetError, MaskError, RsagentError
from rsagent.core.files import atomic_write_bytes, atomic_write_text
from rsagent.core.image import image_size, load_mask, mask_png
from rsagent.core.mask import GroundTruth, decode_rle
from rsagent.core.trajectory import Trajectory
from rsagent.data import Sample, load_dataset
from rsagent.env.episode import EpisodeConfig, EpisodeTask
from rsagent.eval.metrics import Protocol, get_protocol
from rsagent.eval.results import RESULTS, ResultsWriter, prediction_path, read_results, safe_name
from rsagent.eval.summary import build_summary, git_revision, package_versions
from rsagent.policies.base import Policy
from rsagent.runner import run_episodes
from rsagent.segmenters.base import Segmenter

RUN_JSON = "run.json"
SUMMARY = "summary.json"
EXECUTORS = ("local", "ray")
OK_ENDS = ("submit", "budget")


# --- what is evaluated ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """A dataset by name and paths, so that every worker can list the same samples itself."""

    name: str
    root: str
    split: str | None = None
    annotations: str | None = None
    queries: str | None = None
    limit: int | None = None

    @classmethod
    def create(cls, name: str, root: str | Path, split: str | None = None, *, annotations: str | Path | None = None,
               queries: str | Path | None = None, limit: int | None = None) -> DatasetSpec:
        """Paths made absolute (workers run in other folders); `limit` keeps the first N samples."""
        if limit is not None and limit < 1:
            raise RsagentError(f"--limit must be at least 1, got {limit}")

        def absolute(p):
            """As given when it exists nowhere from here (the loader may resolve it against the root)."""
            if p is None:
                return None
            path = Path(p).expanduser()
            return str(path.resolve()) if path.is_absolute() or path.exists() else str(p)

        return cls(name, str(Path(root).expanduser().resolve()), split, absolute(annotations), absolute(queries), limit)

    def load(self) -> list[Sample]:
        samples = load_dataset(self.name, self.root, self.split, annotations=self.annotations, queries=self.queries)
        counts = Counter(s.sample_id for s in samples)
        dups = sorted(k for k, c in counts.items() if c > 1)
        if dups:
            raise DatasetError(f"{self.root}: {len(dups)} sample ids occur more than once (e.g. {', '.join(dups[:5])}); "
                               "results are keyed by sample id")
        return samples if self.limit is None else samples[: self.limit]

    def to_dict(self) -> dict:
        return {"name": self.name, "root": self.root, "split": self.split, "annotations": self.annotations,
                "queries": self.queries, "limit": self.limit}


@dataclass
class Outcome:
    """One finished sample: its result line and, for episodes, the trajectory document."""

    record: dict
    trajectory: dict | None = None


# --- per-sample work (runs in workers) -------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RsagentError) else f"{type(exc).__name__}: {exc}"


def _empty_result(sample: Sample, protocol: Protocol, error: str, t0: float, size: tuple[int, int] | None = None) -> dict:
    """I and U of an empty prediction when the ground truth can still be built; else I = U = 0, IoU 0."""
    try:
        h, w = size or image_size(sample.image_path)
        gt = sample.load_gt(h, w)
        inter, union = protocol.counts(np.zeros(gt.shape, bool), gt)
        sample_iou = protocol.sample_iou(inter, union)
    except Exception as exc:  # noqa: BLE001 - nothing left to score against; the sample still counts
        inter = union = 0
        sample_iou = 0.0
        error = f"{error}; ground truth unavailable ({_describe(exc)})"
    return {"sample_id": sample.sample_id, "I": inter, "U": union, "IoU": sample_iou,
            "seconds": time.perf_counter() - t0, "error": error, "query": sample.query}


class EpisodeWorker:
    """Holds one policy and one segmenter; runs chunks of samples and reports one Outcome each."""

    def __init__(self, dataset: DatasetSpec, policy_factory: Callable[[], Policy],
                 segmenter_factory: Callable[[], Segmenter], episode: EpisodeConfig, protocol: str,
                 batch_size: int, samples: Sequence[Sample] | None = None) -> None:
        self.samples = {s.sample_id: s for s in (samples if samples is not None else dataset.load())}
        self.policy = policy_factory()
        self.segmenter = segmenter_factory()
        self.episode = episode
        self.protocol = get_protocol(protocol)
        self.batch_size = batch_size

    def models(self) -> dict:
        return {"policy": self.policy.identifier, "segmenter": self.segmenter.identifier}

    def run(self, ids: Sequence[str], emit: Callable[[Outcome], None]) -> None:
        tasks, gts = [], {}
        for sid in ids:
            sample = self.samples[sid]
            t0 = time.perf_counter()
            try:
                image, gt = sample.load()
                if gt.shape != image.shape[:2]:
                    raise MaskError(f"ground truth is {gt.shape[1]}x{gt.shape[0]} but the image is "
                                    f"{image.shape[1]}x{image.shape[0]}")
            except Exception as exc:  # noqa: BLE001 - an unloadable sample fails alone, never the run
                record = _empty_result(sample, self.protocol, _describe(exc), t0)
                emit(Outcome({**record, "turns": 0, "status": "failed", "end": "not_run", "turn_iou": [],
                              "tools": {}, "invalid": 0, "malformed": 0}))
                continue
            tasks.append(EpisodeTask(image, sample.query, sid, gt, str(sample.image_path)))
            gts[sid] = gt
        if tasks:
            run_episodes(self.policy, self.segmenter, tasks, self.episode, batch_size=self.batch_size,
                         progress=False, on_done=lambda traj: emit(self._outcome(traj, gts.pop(traj.sample_id))))

    def _outcome(self, traj: Trajectory, gt: GroundTruth) -> Outcome:
        inter, union = self.protocol.counts(decode_rle(traj.final["rle"]), gt)
        end = traj.final.get("reason", "failed")
        tools: Counter = Counter()
        for turn in traj.turns:
            if turn.error is None and turn.tool_call is not None:
                tools[turn.tool_call["name"]] += 1
        record = {
            "sample_id": traj.sample_id, "I": inter, "U": union, "IoU": self.protocol.sample_iou(inter, union),
            "turns": len(traj.turns), "status": "ok" if end in OK_ENDS else "failed",
            "seconds": float(traj.timings.get("total", 0.0)), "end": end, "error": traj.final.get("error"),
            "turn_iou": [t.answer_iou for t in traj.turns], "tools": dict(sorted(tools.items())),
            "invalid": sum(t.error is not None for t in traj.turns),
            "malformed": sum(t.error_kind in ("format", "arguments") for t in traj.turns), "query": traj.query,
        }
        return Outcome(record, traj.to_dict())


def score_sample(sample: Sample, pred_dir: Path, protocol: Protocol) -> dict:
    """One result line for a prediction file (missing or unreadable: scored as empty)."""
    t0 = time.perf_counter()
    try:
        h, w = image_size(sample.image_path)
    except Exception as exc:  # noqa: BLE001
        return {**_empty_result(sample, protocol, f"{sample.image_path}: cannot read the image size ({_describe(exc)})",
                                t0, size=None), "turns": None, "status": "failed"}
    path = prediction_path(pred_dir, sample.sample_id)
    status, error = "ok", None
    pred = np.zeros((h, w), bool)
    if not path.is_file():
        status, error = "missing", f"{path}: no such file"
    else:
        try:
            pred = load_mask(path, size=(w, h))
        except MaskError as exc:
            status, error = "unreadable", str(exc)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is an unreadable prediction
            status, error = "unreadable", f"{path}: {_describe(exc)}"
    try:
        gt = sample.load_gt(h, w)
    except Exception as exc:  # noqa: BLE001
        return {**_empty_result(sample, protocol, _describe(exc), t0, size=(h, w)), "turns": None, "status": "failed"}
    inter, union = protocol.counts(pred, gt)
    return {"sample_id": sample.sample_id, "I": inter, "U": union, "IoU": protocol.sample_iou(inter, union),
            "turns": None, "status": status, "seconds": time.perf_counter() - t0, "error": error,
            "query": sample.query}


class GuardedWorker:
    """A worker (`worker_cls(*args)`: an EpisodeWorker, or synthesis' worker) built in a worker process
    or actor: a failure to build it (a model that does not load) is kept and raised, with its message,
    by every call, instead of killing the worker."""

    def __init__(self, worker_cls: type, *args) -> None:
        self.worker = None
        self.error: str | None = None
        try:
            self.worker = worker_cls(*args)
        except BaseException as exc:  # noqa: BLE001 - reported to the driver by the next call
            self.error = _describe(exc)

    def _get(self):
        if self.worker is None:
            raise RsagentError(f"a worker failed to start: {self.error}")
        return self.worker

    def models(self) -> dict:
        return self._get().models()

    def run_collect(self, ids: Sequence[str]) -> list[Outcome]:
        """The outcomes of `ids`, gathered (what crosses a process or actor boundary)."""
        out: list[Outcome] = []
        self._get().run(ids, out.append)
        return out


# --- local process pool (one GuardedWorker per process) ---------------------------------------------
_POOL_WORKER: GuardedWorker | None = None


def _pool_init(args: tuple) -> None:
    global _POOL_WORKER
    _POOL_WORKER = GuardedWorker(*args)


def _pool_models() -> dict:
    return _POOL_WORKER.models()  # type: ignore[union-attr]


def _pool_run(ids: list[str]) -> list[Outcome]:
    return _POOL_WORKER.run_collect(ids)  # type: ignore[union-attr]


# --- the driver ----------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _same_but_sample_count(a: dict, b: dict) -> bool:
    """Whether two run configurations differ at most in how many samples of the same split they take."""
    def strip(config: dict) -> dict:
        dataset = dict(config.get("dataset") or {})
        # the stop of "test:200" or of a range "test:500-700" may grow; the split and a range's start may not
        dataset["split"] = re.sub(r"(:|:\d+-)\d+$", r"\1", str(dataset.get("split")))
        dataset.pop("limit", None)
        return {**config, "dataset": dataset}
    return strip(a) == strip(b)


def _flat(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


@dataclass
class _Run:
    """Output folder, resume checks, the results writer and the progress bar of one invocation."""

    out: Path
    kind: str
    config: dict
    resume: bool
    argv: list[str]
    execution: dict
    progress: bool
    samples: list[Sample]
    protocol: Protocol
    done: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    write_masks: bool = True  # masks/<name>.png beside each trajectory (eval); synthesis keeps only the RLE
    postfix: Callable[[dict], dict] | None = None  # progress-bar figures from the finished records; None: gIoU

    def open(self) -> list[Sample]:
        """Check the folder against --resume; return the samples still to do."""
        self.started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        results, run_json = self.out / RESULTS, self.out / RUN_JSON
        has_results = results.exists() and results.stat().st_size > 0
        if has_results and not self.resume:
            raise RsagentError(f"{self.out} already holds results ({results}): pass --resume to finish that run, "
                               "or choose another --out")
        self.config = _jsonable(self.config)
        revision = git_revision()
        extending = False
        if self.resume and run_json.exists():
            self.meta = json.loads(run_json.read_text(encoding="utf-8"))
            stored = self.meta.get("config", {})
            extending = stored != self.config and _same_but_sample_count(stored, self.config)
            if extending:
                # more samples of the same split (test:200 -> test:500): the finished ones stay, the rest run now
                self.meta["config"] = self.config
            elif stored != self.config:
                a, b = _flat(stored), _flat(self.config)
                diff = [f"{k}: {a.get(k, '(unset)')!r} then, {b.get(k, '(unset)')!r} now"
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                raise RsagentError(f"--resume: {self.out} holds a run with another configuration ("
                                   + "; ".join(diff[:6]) + "); resume with the same options or choose another --out")
        elif has_results:
            raise RsagentError(f"--resume: {run_json} is missing, so {results} cannot be checked against this "
                               "configuration; choose another --out")
        else:
            # versions and git state as the run starts: what reproduces it, even if a resume runs later code
            self.meta = {"kind": self.kind, "config": self.config, "models": None, "versions": package_versions(),
                         "git": revision, "invocations": []}
        self.meta.setdefault("invocations", []).append({"argv": self.argv, "started": _now(), **self.execution,
                                                        "git": revision})
        self._save_meta()
        ids = {s.sample_id for s in self.samples}
        for rec in read_results(results, repair=True):
            if rec["sample_id"] not in ids and extending:
                raise RsagentError(f"--resume: {results} holds sample {rec['sample_id']!r}, which is beyond the "
                                   f"{len(ids)} samples asked now; a resumed run can take more samples of its split, "
                                   "not fewer: choose another --out")
            if rec["sample_id"] not in ids:
                raise RsagentError(f"{results} holds sample {rec['sample_id']!r}, which is not in the dataset as "
                                   "listed now; was the dataset changed? choose another --out")
            self.done[rec["sample_id"]] = rec
        self.writer = ResultsWriter(results)
        self.bar = tqdm(total=len(self.samples), initial=len(self.done), desc=f"{self.kind} {self.config['dataset']['name']}",
                        unit="sample", disable=not self.progress, dynamic_ncols=True)
        self._iou_sum = sum(float(r["IoU"]) for r in self.done.values())
        self._postfix()
        return [s for s in self.samples if s.sample_id not in self.done]

    def _save_meta(self) -> None:
        atomic_write_text(self.out / RUN_JSON, json.dumps(self.meta, indent=1, ensure_ascii=False))

    def set_models(self, models: dict) -> None:
        stored = self.meta.get("models")
        if stored and stored != models:
            raise RsagentError(f"--resume: the run in {self.out} was made by {stored}, this invocation builds {models}; "
                               "choose another --out")
        if stored != models:
            self.meta["models"] = models
            self._save_meta()

    def commit(self, outcome: Outcome) -> None:
        rec = outcome.record
        sid = rec["sample_id"]
        if sid in self.done:
            return
        if outcome.trajectory is not None:
            name = safe_name(sid)
            atomic_write_text(self.out / "trajectories" / f"{name}.json",
                              json.dumps(outcome.trajectory, indent=1, allow_nan=False, ensure_ascii=False))
            if self.write_masks:
                atomic_write_bytes(self.out / "masks" / f"{name}.png",
                                   mask_png(decode_rle(outcome.trajectory["final"]["rle"])))
        self.writer.append(rec)
        self.done[sid] = rec
        self._iou_sum += float(rec["IoU"])
        self.bar.update(1)
        self._postfix()

    def _postfix(self) -> None:
        if self.done and self.postfix is not None:
            self.bar.set_postfix(self.postfix(self.done), refresh=False)
        elif self.done:
            failed = sum(r["status"] != "ok" for r in self.done.values())
            self.bar.set_postfix(gIoU=f"{self._iou_sum / len(self.done):.4f}", failed=failed, refresh=False)

    def close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()
        if hasattr(self, "bar"):
            self.bar.close()

    def finish(self, max_turns: int | None = None) -> dict:
        records = read_results(self.out / RESULTS)
        got = {r["sample_id"]: r for r in records}
        missing = [s.sample_id for s in self.samples if s.sample_id not in got]
        if missing:
            raise RsagentError(f"{len(missing)} samples have no result (e.g. {', '.join(missing[:5])}); "
                               "run again with --resume")
        reproduce = {"command": self.kind, "config": self.config, "models": self.meta.get("models"),
                     "versions": self.meta.get("versions") or package_versions(), "git": self.meta.get("git")}
        first = self.meta["invocations"][0]
        run = {"argv": first["argv"], "invocations": self.meta["invocations"], **self.execution,
               "wall_seconds": time.perf_counter() - self.started}
        summary = build_summary(list(got.values()), self.protocol, kind=self.kind, reproduce=reproduce, run=run,
                                max_turns=max_turns)
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False, allow_nan=False))
        return summary


def _chunks(samples: Sequence[Sample], size: int) -> list[list[str]]:
    ids = [s.sample_id for s in samples]
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def evaluate(dataset: DatasetSpec, out_dir: str | Path, *, policy_factory: Callable[[], Policy],
             segmenter_factory: Callable[[], Segmenter], episode: EpisodeConfig = EpisodeConfig(),
             protocol: str = "lisa", settings: dict | None = None, resume: bool = False, workers: int = 1,
             executor: str = "local", batch_size: int = 8, progress: bool = True, argv: list[str] | None = None,
             gallery: int = 60, report: bool = True, ray_address: str | None = None,
             gpus_per_worker: float = 0.0) -> dict:
    """Run the policy with the segmenter on every sample of `dataset`; returns summary.json's content.

    `policy_factory` / `segmenter_factory` build one policy / segmenter per worker (picklable for
    workers > 1 or Ray, e.g. functools.partial of a module-level function). `settings` (JSON-able)
    is recorded as part of the configuration and must match on resume.
    """
    if workers < 1:
        raise RsagentError(f"--workers must be at least 1, got {workers}")
    if batch_size < 1:
        raise RsagentError(f"--batch-size must be at least 1, got {batch_size}")
    if executor not in EXECUTORS:
        raise RsagentError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    proto = get_protocol(protocol)
    if executor == "ray":
        _import_ray()
    samples = dataset.load()
    config = {"command": "eval", "dataset": dataset.to_dict(), "protocol": proto.name, "episode": episode.to_dict(),
              "batch_size": batch_size, "settings": settings or {}}
    run = _Run(Path(out_dir), "eval", config, resume, list(argv if argv is not None else sys.argv),
               {"executor": executor, "workers": workers}, progress, samples, proto)
    try:
        pending = run.open()
        worker_args = (dataset, policy_factory, segmenter_factory, episode, proto.name, batch_size)
        execute(run, pending, EpisodeWorker, worker_args, workers=workers, executor=executor, batch_size=batch_size,
                ray_address=ray_address, gpus_per_worker=gpus_per_worker,
                in_process=lambda: EpisodeWorker(*worker_args, samples=samples))
        summary = run.finish(max_turns=episode.max_turns)
    finally:
        run.close()
    if report:
        _report(run, summary, samples, gallery, None)
    return summary


def score(dataset: DatasetSpec, predictions: str | Path, out_dir: str | Path, *, protocol: str = "lisa",
          resume: bool = False, progress: bool = True, argv: list[str] | None = None, gallery: int = 60,
          report: bool = True) -> dict:
    """Score `predictions/<sample_id>.png` (non-zero = foreground, the image's size) for every sample."""
    pred_dir = Path(predictions).expanduser().resolve()
    if not pred_dir.is_dir():
        raise RsagentError(f"{predictions}: not a folder of prediction PNGs")
    proto = get_protocol(protocol)
    samples = dataset.load()
    config = {"command": "score", "dataset": dataset.to_dict(), "protocol": proto.name, "predictions": str(pred_dir)}
    run = _Run(Path(out_dir), "score", config, resume, list(argv if argv is not None else sys.argv),
               {"executor": "local", "workers": 1}, progress, samples, proto)
    try:
        for sample in run.open():
            run.commit(Outcome(score_sample(sample, pred_dir, proto)))
        summary = run.finish()
    finally:
        run.close()
    if report:
        _report(run, summary, samples, gallery, pred_dir)
    return summary


def _report(run: _Run, summary: dict, samples: list[Sample], gallery: int, predictions: Path | None) -> None:
    """report.html; the run's results and summary are written already, so a failure here only warns."""
    from rsagent.eval.report import write_report

    try:
        write_report(run.out, summary, list(run.done.values()), samples, gallery=gallery, predictions=predictions)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"report.html was not written ({type(exc).__name__}: {exc}); results.jsonl and summary.json "
                      "are complete", RuntimeWarning, stacklevel=3)


def execute(run: _Run, pending: Sequence, worker_cls: type, worker_args: tuple, *, workers: int = 1,
            executor: str = "local", batch_size: int = 8, ray_address: str | None = None,
            gpus_per_worker: float = 0.0, in_process: Callable[[], object] | None = None) -> None:
    """Run `pending` (items with a `sample_id`) in chunks of `batch_size` through workers built as
    `worker_cls(*worker_args)` (each has `models()` and `run(ids, emit)`): in-process
    (`in_process()` builds that worker, e.g. reusing the driver's listing), in local processes, or on Ray
    actors; every outcome goes to `run.commit`, in the driver only."""
    if not pending:
        return
    if executor == "ray":
        _run_ray(run, pending, (worker_cls, *worker_args), workers, batch_size, ray_address, gpus_per_worker)
    elif workers == 1:
        worker = in_process() if in_process is not None else worker_cls(*worker_args)
        run.set_models(worker.models())
        for chunk in _chunks(pending, batch_size):
            worker.run(chunk, run.commit)
    else:
        _run_pool(run, pending, (worker_cls, *worker_args), workers, batch_size)


def _run_pool(run: _Run, pending: list[Sample], worker_args: tuple, workers: int, batch_size: int) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or CUDA
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init,
                             initargs=(worker_args,)) as pool:
        try:
            run.set_models(pool.submit(_pool_models).result())
            queue = deque(_chunks(pending, batch_size))
            inflight = set()
            while queue or inflight:
                while queue and len(inflight) < 2 * workers:  # bounded: outcomes stream back in order of finishing
                    inflight.add(pool.submit(_pool_run, queue.popleft()))
                finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    for outcome in fut.result():
                        run.commit(outcome)
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            raise RsagentError(f"a worker process died (killed, or out of memory); the finished samples are kept in "
                               f"{run.out}: rerun with --resume") from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RsagentError("--executor ray needs Ray: pip install rsagent[dist]") from None
    return ray


def _run_ray(run: _Run, pending: list[Sample], worker_args: tuple, workers: int, batch_size: int,
             address: str | None, gpus_per_worker: float) -> None:
    import logging

    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, num_gpus=None if gpus_per_worker else 0, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
        started = True
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(GuardedWorker)
    actors = [actor_cls.remote(*worker_args) for _ in range(workers)]
    try:
        run.set_models(ray.get(actors[0].models.remote()))
        queue = deque(_chunks(pending, batch_size))
        inflight: dict = {}
        for actor in actors:
            for _ in range(2):
                if queue:
                    inflight[actor.run_collect.remote(queue.popleft())] = actor
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            actor = inflight.pop(ready[0])
            for outcome in ray.get(ready[0]):
                run.commit(outcome)
            if queue:
                inflight[actor.run_collect.remote(queue.popleft())] = actor
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RsagentError):
            raise RsagentError(str(cause)) from None
        first = next((line for line in str(cause or exc).splitlines() if line.strip()), type(exc).__name__)
        raise RsagentError(f"a Ray worker failed ({first}); the finished samples are kept in {run.out}: "
                           "rerun with --resume") from None
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
