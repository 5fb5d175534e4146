"""Every setting of a grounding run (single first turns on shapes, `rsagent train ground`) as one typed
dataclass, loadable from YAML.

Loaded with `config.load_config(GroundConfig, FILE, **overrides)`; the config is written to
OUT/train_config.yaml and into every checkpoint, and `resume` refuses settings that shape the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rsagent.core.errors import RsagentError
from rsagent.train.config import check_freeze_vision

# May change on --resume: where the run stops, where it runs, what and how often it logs, saves and
# evaluates. `steps` may not: the learning-rate schedule and the curriculum follow it.
GROUND_RESUMABLE_CHANGES = frozenset({
    "stop_after", "minutes", "resume", "save_steps", "save_total_limit", "eval_every", "eval_n", "log_steps",
    "threads", "device", "progress"})

QUERIES = ("attribute", "mix")
ANSWERS = ("call", "episode", "inventory")


@dataclass
class GroundConfig:
    # from what, to where
    model: str | None = None  # a `rsagent shapes model` folder; None: a fresh random shapes model of `seed`
    out: str | None = None  # log, checkpoints, result.json and the final model
    # length: the schedule and the curriculum follow `steps`; stop_after / minutes end the run earlier
    steps: int = 2000  # optimiser steps of `batch` samples
    stop_after: int | None = None  # stop after this many steps of the schedule (replays a run cut by minutes)
    minutes: float | None = None  # wall-clock cap on this invocation's training (None: none)
    # what is trained on
    batch: int = 32
    lr: float = 2e-3
    curriculum: str = "0.1,0.3"  # shares of `steps` ending the one-shape and the 2-4 shape stages (then 2-8)
    queries: str = "attribute"  # attribute: every single-target attribute query of a scene; mix: the dataset's samples
    answer: str = "call"  # call: the bare segment call after the user turn; episode: the oracle's first turn;
    # inventory: every shape listed ("small red circle [x0, y0, x1, y1]"), then the bare call
    colour_first: float = 0.0  # share of `steps` on colour-only queries ("the red shape") first
    size: int = 112  # scene pixels a side
    seed: int = 0
    # what trains: true the whole vision tower is kept, blocks all of it but the merger
    freeze_vision: bool | str = False
    # auxiliary losses (0: off): MatchHead on the visual tokens' hidden states, AttendTarget on one head
    match_aux: float = 1.0
    match_layer: int = 2
    attend_aux: float = 0.0
    attend_layer: int = -1
    # held-out `test` queries: all of them at the end, the first 200 every eval_every steps (0: never)
    eval_n: int = 600
    eval_every: int = 250
    # logs, checkpoints, where it runs
    log_steps: int = 25
    save_steps: int = 250
    save_total_limit: int | None = 2
    threads: int = 1  # torch threads (on a shared 2-core machine more threads spin and run slower)
    device: str | None = None  # cpu or cuda; None: cuda when available
    progress: bool = True
    resume: bool = False  # continue from the newest OUT/checkpoint-*

    def to_dict(self) -> dict:
        return asdict(self)

    def stages(self) -> tuple[float, float]:
        """The curriculum as two shares of `steps`."""
        try:
            one, few = (float(v) for v in str(self.curriculum).split(","))
        except ValueError:
            raise RsagentError(f"curriculum must be two shares of the steps, e.g. 0.1,0.3, got {self.curriculum!r}") from None
        return one, few

    def check(self) -> None:
        """Values a run cannot start with, as one clear error."""
        if not self.out:
            raise RsagentError("train ground needs --out (or `out:` in the --config file)")
        for name in ("steps", "batch", "eval_n", "log_steps", "save_steps", "threads"):
            if getattr(self, name) < 1:
                raise RsagentError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("stop_after", "save_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RsagentError(f"{name} must be at least 1 (or left out), got {getattr(self, name)}")
        if self.minutes is not None and self.minutes <= 0:
            raise RsagentError(f"minutes must be positive (or left out), got {self.minutes}")
        if self.lr <= 0 or self.eval_every < 0 or self.match_aux < 0 or self.attend_aux < 0:
            raise RsagentError("lr must be positive; eval_every, match_aux and attend_aux non-negative")
        if self.queries not in QUERIES:
            raise RsagentError(f"queries must be {' or '.join(QUERIES)}, got {self.queries!r}")
        if self.answer not in ANSWERS:
            raise RsagentError(f"answer must be {' or '.join(ANSWERS)}, got {self.answer!r}")
        if not 0 <= self.colour_first <= 1:
            raise RsagentError(f"colour_first is a share of the steps, 0 to 1, got {self.colour_first}")
        stages = self.stages()
        if self.queries == "mix" and (self.answer != "episode" or stages != (0.0, 0.0) or self.colour_first):
            raise RsagentError("--queries mix needs --answer episode and --curriculum 0,0 (and no --colour-first): "
                               "a bare call cannot answer absent or multi-target queries, and the dataset draws "
                               "its own scenes")
        check_freeze_vision(self.freeze_vision)
        if self.device not in (None, "cpu", "cuda"):
            raise RsagentError(f"device must be cpu or cuda, got {self.device!r}")
