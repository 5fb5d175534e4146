"""`synthesize`: expert trajectories over a dataset, filtered, exported for training.

Under the output folder, the eval runner's machinery (`eval.run`: `run.json`, `results.jsonl`
appended and synced per item, `trajectories/<name>.json`, `--resume`, local processes or Ray):

- `results.jsonl`: one line per item (accepted or rejected, with the reason and the figures the
  stats need, and the item's export records); rewritten in item order when the run finishes;
- `images/<hash>.png`: every picture a trajectory shows the policy, written once (content-addressed);
- `sft.jsonl` (TRL `messages` + `images`), `sharegpt.jsonl` + `dataset_info.json` (LLaMA-Factory),
  `rl_prompts.jsonl` (one (image, query) a line with COCO RLE ground truth);
- `stats.json` and `stats.html`.

Everything but `run.json` (which logs invocations and wall times) is byte-identical for the same
inputs and seed, whatever the executor and however often the run was killed and resumed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.core.files import atomic_write_text
from rsagent.core.frames import frame_from_dict, make_frame
from rsagent.core.image import load_image
from rsagent.core.mask import decode_rle, iou, mask_box
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import EpisodeConfig, EpisodeTask
from rsagent.eval.metrics import get_protocol
from rsagent.eval.results import RESULTS, dumps_line, read_results, safe_name
from rsagent.eval.run import DatasetSpec, Outcome, _describe, _now, _Run, execute
from rsagent.policies.base import format_answer
from rsagent.policies.narration import Narrator
from rsagent.policies.oracle import OracleConfig, best_union
from rsagent.runner import run_episodes
from rsagent.segmenters.base import Segmenter
from rsagent.synth.expert import DEFAULT_MIX, ExpertPolicy, Opening, elsewhere_box
from rsagent.synth.export import EXPORT_FILES, ImageStore, export_rows, trajectory_images, write_exports
from rsagent.synth.filters import FilterConfig, rejection
from rsagent.synth.items import Listing, SynthItem, list_items, rng_for
from rsagent.synth.queries import QueryConfig
from rsagent.synth.recovery import judge, replay
from rsagent.synth.stats import build_stats, write_stats_html

EXPORTS = (*EXPORT_FILES, "stats.json", "stats.html")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes the data (recorded in run.json; --resume must match it)."""

    seed: int = 0
    num: int | None = None  # items (image, query, opening) to run; None: all
    max_turns: int = 8
    frame: dict = field(default_factory=lambda: make_frame("qwen2.5-vl").to_dict())
    mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_MIX.items())
    queries: QueryConfig = QueryConfig()
    filters: FilterConfig = FilterConfig()
    teacher: dict | None = None  # TeacherConfig fields, for rewriting reasoning and writing queries
    rewrite: bool = False  # the teacher rewrites each turn's reasoning (the call is never changed)
    teacher_queries: int = 0  # queries per image the teacher is asked for (instance sources)
    variants: int = 1  # items per query, each with an opening of another kind
    mistake_loss: bool = False  # True: the deliberately wrong openings are SFT targets too (no "loss": false marks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mix"] = dict(self.mix)
        return d


# --- per-item work (runs in workers) -------------------------------------------------------------
class SynthWorker:
    """Holds one expert and one segmenter; runs chunks of items and reports one Outcome each."""

    def __init__(self, dataset: DatasetSpec, config: SynthConfig, out: str,
                 segmenter_factory: Callable[[], Segmenter], batch_size: int, listing: Listing | None = None) -> None:
        self.config, self.out, self.batch_size = config, Path(out), batch_size
        self.listing = listing if listing is not None else _listing(dataset, config, self.out)
        self.items = {it.sample_id: it for it in self.listing.items}
        self.segmenter = segmenter_factory()
        self.policy = ExpertPolicy(OracleConfig(seed=config.seed))
        self.policy.frame = frame_from_dict(config.frame)
        self.protocol = get_protocol("lisa")
        self.store = ImageStore(self.out)
        self.teacher = None
        if config.teacher and config.rewrite:
            from rsagent.synth.teacher import Teacher, TeacherConfig

            self.teacher = Teacher(TeacherConfig(**config.teacher))

    def models(self) -> dict:
        teacher = self.config.teacher["model"] if self.teacher is not None else None
        return {"policy": self.policy.identifier, "segmenter": self.segmenter.identifier, "teacher": teacher}

    def run(self, ids: Sequence[str], emit: Callable[[Outcome], None]) -> None:
        tasks: dict[str, tuple[SynthItem, EpisodeTask]] = {}
        for sid in ids:
            item = self.items[sid]
            try:
                image = load_image(item.image_path)
                gt = self.listing.ground_truth(item)(image.shape[0], image.shape[1])
            except Exception as exc:  # noqa: BLE001 - an unloadable item fails alone, never the run
                emit(self._failed(item, item.opening, exc))
                continue
            opening = item.opening
            if opening.kind == "wrong_region" and opening.wrong_box is None:
                box = mask_box(gt.mask)
                region = elsewhere_box(box, gt.shape) if box is not None else None
                opening = Opening("wrong_region", region) if region is not None else Opening("jittered_box")
            self.policy.assign(sid, opening)
            tasks[sid] = (item, EpisodeTask(image, item.query, sid, gt, item.image_path))
        if tasks:
            run_episodes(self.policy, self.segmenter, [t for _, t in tasks.values()],
                         EpisodeConfig(max_turns=self.config.max_turns), batch_size=self.batch_size, progress=False,
                         on_done=lambda traj: emit(self._guarded_outcome(traj, *tasks[traj.sample_id])))

    def _failed(self, item: SynthItem, opening: Opening, exc: BaseException) -> Outcome:
        return Outcome(_base_record(item, opening, self.listing) | {
            "status": "rejected", "reject": "failed", "error": _describe(exc), "IoU": 0.0})

    def _guarded_outcome(self, traj: Trajectory, item: SynthItem, task: EpisodeTask) -> Outcome:
        """The item's outcome; an error while judging, cutting or exporting fails that item alone."""
        try:
            return self._outcome(traj, item, task)
        except Exception as exc:  # noqa: BLE001
            return self._failed(item, self.policy.opening(item.sample_id), exc)

    def _outcome(self, traj: Trajectory, item: SynthItem, task: EpisodeTask) -> Outcome:
        opening = self.policy.opening(traj.sample_id)
        record = _base_record(item, opening, self.listing)
        failed = traj.final.get("reason") == "failed"
        verdict = None if failed else judge(traj, task.gt)  # type: ignore[arg-type]
        turns_run = len(traj.turns)
        if verdict is not None and verdict.cut_at is not None:
            traj = self._cut(traj, task, verdict.cut_at)
        if self.teacher is not None and not failed:
            self._rewrite(traj, task)
        traj.timings = {}  # wall times differ between runs: the files must not
        for turn in traj.turns:
            turn.seconds = {}
        inter, union = self.protocol.counts(decode_rle(traj.final["rle"]), task.gt)  # type: ignore[arg-type]
        final_iou = self.protocol.sample_iou(inter, union)
        traj.metrics = {"iou": final_iou, "intersection": inter, "union": union}  # under the eval protocol
        first = traj.candidates[0] if traj.candidates else None
        first_iou = None
        if first is not None:
            fi, fu = self.protocol.counts(decode_rle(first.rle), task.gt)  # type: ignore[arg-type]
            first_iou = self.protocol.sample_iou(fi, fu)
        tools = Counter(t.tool_call["name"] for t in traj.turns if t.tool_call is not None and t.error is None)
        reason = rejection(traj, final_iou, self.config.filters)
        calls = [t.tool_call for t in traj.turns]
        record.update({
            "status": "accepted" if reason is None else "rejected", "reject": reason,
            "error": traj.final.get("error"), "IoU": final_iou, "I": inter, "U": union, "first_iou": first_iou,
            "turns": len(traj.turns), "tools": dict(sorted(tools.items())), "cut": turns_run - len(traj.turns)
            if verdict is not None and verdict.cut_at is not None else 0,
            "harmful": len(verdict.harmful) if verdict is not None else 0,
            "recovered": _recovered(verdict),
            "mistake_turns": [t for t in self.policy.mistakes(traj.sample_id) if t <= len(traj.turns)],
            "call_key": hashlib.sha1(json.dumps([item.image_path, item.query, calls], sort_keys=True)
                                     .encode()).hexdigest()})
        record["export"] = export_rows(record, traj, task.image, task.gt, self.store,  # type: ignore[arg-type]
                                       mistake_loss=self.config.mistake_loss)
        return Outcome(record, traj.to_dict())

    def _cut(self, traj: Trajectory, task: EpisodeTask, cut_at: int) -> Trajectory:
        """Keep the turns before `cut_at`, then submit the best candidates they made."""
        ep = replay(traj, task, self.segmenter, [t.assistant for t in traj.turns[:cut_at - 1]])
        gt = task.gt
        assert gt is not None
        ranked = sorted(ep.candidates, key=lambda c: -iou(ep.mask(c.id), gt))
        ids = best_union(ep, [c.id for c in _separate(ep, ranked)])
        narrator = Narrator(rng_for(self.config.seed, "cut", traj.sample_id), task.query)
        ep.step(format_answer(narrator.submit(ids, "best" if ids else "absent"), "submit", {"mask_ids": ids}))
        return ep.trajectory({k: traj.config[k] for k in ("policy", "policy_settings") if k in traj.config})

    def _rewrite(self, traj: Trajectory, task: EpisodeTask) -> None:
        """The teacher's reasoning for each turn, from the picture the policy saw last; calls unchanged."""
        pictures = trajectory_images(traj, task.image)
        seen = 1  # the user's image
        latest, observation = pictures[0], None
        for turn in traj.turns:
            if turn.tool_call is not None:
                text = self.teacher.rewrite_reasoning(latest, task.query, observation, turn.tool_call)  # type: ignore[union-attr]
                if text:
                    turn.think = text
                    turn.assistant = format_answer(text, turn.tool_call["name"], turn.tool_call["arguments"])
            n = len(turn.observation.images)
            if n:
                latest = pictures[seen + n - 1]
                seen += n
            observation = turn.observation.text


def _separate(ep, ranked: list) -> list:
    """Candidates in rank order, leaving out any that mostly overlaps a better one: a union is made of
    different parts of the target, never of a mask and its own refinement."""
    kept: list = []
    for cand in ranked:
        mask = ep.mask(cand.id)
        area = max(1, int(mask.sum()))
        if all(int((mask & ep.mask(k.id)).sum()) < 0.1 * area for k in kept):
            kept.append(cand)
    return kept


def _recovered(verdict) -> bool:
    """A harmful turn was corrected within the kept turns: the trajectory teaches recovery."""
    if verdict is None:
        return False
    if verdict.cut_at is None:
        return verdict.recovered
    return any(h < verdict.cut_at for h in verdict.harmful)


def _base_record(item: SynthItem, opening: Opening, listing: Listing) -> dict:
    """What an item is: its source, query, target instances (indices and annotation ids) and opening."""
    image = listing.images.get(item.source_id)
    ann_ids = [image.instances[i].ann_id for i in item.targets] if image is not None else None
    return {"sample_id": item.sample_id, "source": item.source, "source_id": item.source_id, "image": item.image_path,
            "query": item.query, "kind": item.kind, "targets": list(item.targets), "ann_ids": ann_ids,
            "opening": opening.kind, "spec": item.spec}


def _listing(dataset: DatasetSpec, config: SynthConfig, out: Path) -> Listing:
    return list_items(dataset, config.seed, config.num, config.queries, dict(config.mix),
                      extra_queries=_teacher_queries(out), variants=config.variants)


def _teacher_queries(out: Path) -> dict | None:
    """The teacher's verified queries by image id, from the run's cache (None when there is none)."""
    path = out / TEACHER_QUERIES
    if not path.exists():
        return None
    from rsagent.synth.queries import GeneratedQuery

    return {r["sample_id"]: [GeneratedQuery(q["text"], q["kind"], tuple(q["targets"]), q["spec"]) for q in r["queries"]]
            for r in read_results(path)}


TEACHER_QUERIES = "teacher_queries.jsonl"


# --- the driver ------------------------------------------------------------------------------------
def synthesize(dataset: DatasetSpec, out_dir: str | Path, *, config: SynthConfig = SynthConfig(),
               segmenter_factory: Callable[[], Segmenter], segmenter: str = "grabcut", resume: bool = False,
               workers: int = 1, executor: str = "local", batch_size: int = 8, progress: bool = True,
               argv: list[str] | None = None, gallery: int = 24, ray_address: str | None = None) -> dict:
    """Synthesize, filter and export trajectories for `dataset` into `out_dir`; returns stats.json's content.

    `segmenter_factory` builds one segmenter per worker (picklable for workers > 1 or Ray);
    `segmenter` names it in the configuration (the IoU bar's default depends on it).
    """
    if workers < 1 or batch_size < 1:
        raise RsagentError(f"--workers and --batch-size must be at least 1, got {workers} and {batch_size}")
    out = Path(out_dir)
    if config.teacher and config.teacher_queries > 0:
        _ask_teacher_for_queries(dataset, config, out, resume, progress)
    listing = _listing(dataset, config, out)
    run_config = {"command": "synth", "dataset": dataset.to_dict(), "segmenter": segmenter, "synth": config.to_dict(),
                  "batch_size": batch_size}
    run = _Run(out, "synth", run_config, resume, list(argv if argv is not None else sys.argv),
               {"executor": executor, "workers": workers}, progress, listing.items, get_protocol("lisa"),
               write_masks=False, postfix=_progress_figures)
    try:
        pending = run.open()
        worker_args = (dataset, config, str(out.resolve()), segmenter_factory, batch_size)
        execute(run, pending, SynthWorker, worker_args, workers=workers, executor=executor, batch_size=batch_size,
                ray_address=ray_address, in_process=lambda: SynthWorker(*worker_args, listing=listing))
        stats = _finish(run, listing, gallery)
    finally:
        run.close()
    return stats


def _progress_figures(done: dict) -> dict:
    accepted = sum(r["status"] == "accepted" for r in done.values())
    return {"accepted": accepted, "rate": f"{accepted / max(1, len(done)):.2f}"}


def _finish(run: _Run, listing: Listing, gallery: int) -> dict:
    """Order the results as the items, mark duplicates, write the exports and the stats."""
    out = run.out
    got = {r["sample_id"]: r for r in read_results(out / RESULTS)}
    missing = [it.sample_id for it in listing.items if it.sample_id not in got]
    if missing:
        raise RsagentError(f"{len(missing)} items have no result (e.g. {', '.join(missing[:5])}); run again with --resume")
    records = [got[it.sample_id] for it in listing.items]
    seen: set[str] = set()
    for rec in records:  # the first of identical (image, query, calls) is kept, in item order
        if rec["status"] == "accepted":
            if rec["call_key"] in seen:
                rec.update(status="rejected", reject="duplicate")
            seen.add(rec["call_key"])
    atomic_write_text(out / RESULTS, b"".join(dumps_line(r) for r in records).decode("utf-8"))
    accepted = [r for r in records if r["status"] == "accepted"]
    write_exports(out, [(r, r.get("export", {})) for r in records])
    plain = [{k: v for k, v in r.items() if k != "export"} for r in records]
    stats = build_stats(plain)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    shown = []
    kept = [r for r in plain if r["status"] == "accepted"]
    step = max(1, len(kept) // gallery) if gallery else 1
    for rec in kept[::step][:gallery]:  # spread over the run: items of one image come in a row
        traj = Trajectory.load(out / "trajectories" / f"{safe_name(rec['sample_id'])}.json")
        shown.append((rec, traj, load_image(rec["image"])))
    write_stats_html(out, stats, shown)
    invocation = run.meta["invocations"][-1]
    wall = time.perf_counter() - run.started
    invocation.update(finished=_now(), wall_seconds=round(wall, 1), items=len(records), accepted=len(accepted))
    run._save_meta()
    return stats


def _ask_teacher_for_queries(dataset: DatasetSpec, config: SynthConfig, out: Path, resume: bool,
                             progress: bool) -> None:
    """Ask the teacher for queries per image, cached in teacher_queries.jsonl (one line an image,
    appended as each is answered, so a kill loses at most the image being asked about)."""
    from tqdm.auto import tqdm

    from rsagent.eval.results import ResultsWriter
    from rsagent.synth.items import is_instance_source
    from rsagent.synth.teacher import Teacher, TeacherConfig

    if not is_instance_source(dataset):
        raise RsagentError(f"--teacher-queries needs a source with instance lists (coco without queries, yoloseg); "
                           f"{dataset.name} has its own queries")
    path = out / TEACHER_QUERIES
    if path.exists() and not resume and (out / RESULTS).exists():
        raise RsagentError(f"{out} already holds a run: pass --resume to finish it, or choose another --out")
    done = {r["sample_id"] for r in read_results(path, repair=True)}
    teacher = Teacher(TeacherConfig(**config.teacher))  # type: ignore[arg-type]
    teacher.check()
    # only the images the run's items come from (with --num, a shuffled subset), in run order
    base = list_items(dataset, config.seed, config.num, config.queries, dict(config.mix), variants=config.variants)
    images = [base.images[i] for i in dict.fromkeys(it.source_id for it in base.items)]
    with ResultsWriter(path) as writer:
        for image in tqdm(images, desc="teacher queries", unit="image", disable=not progress):
            if image.image_id in done:
                continue
            found = teacher.write_queries(load_image(image.image_path), image, config.teacher_queries)
            writer.append({"sample_id": image.image_id,
                           "queries": [{"text": q.text, "kind": q.kind, "targets": list(q.targets), "spec": q.spec}
                                       for q in found.queries],
                           "rejected": dict(found.rejected)})
