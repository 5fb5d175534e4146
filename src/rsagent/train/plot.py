"""A training run's curves as one figure: the loss beside the held-out rollouts (OUT/log.png)."""

from __future__ import annotations

import json
from pathlib import Path


SFT_CURVES = (("loss", "loss (assistant tokens)"),)


def plot_log(log: str | Path, out: str | Path, title: str | None = None,
             curves: tuple[tuple[str, str], ...] = SFT_CURVES, log_scale: bool = True,
             left_title: str = "training loss") -> Path:
    """Read a run's log.jsonl and write a PNG: the training curves per step on the left (SFT: the loss;
    RL: the rewards), the rollout metrics (well-formed and valid calls, gIoU) on the right when the run
    evaluated any."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    rollouts = [r for r in rows if "eval_rollout_gIoU" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in curves:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
        if points:
            left.plot(*zip(*points), label=label)
    left.set(xlabel="step", ylabel=curves[0][1] if len(curves) == 1 else None,
             yscale="log" if log_scale else "linear", title=left_title)
    if len(curves) > 1:
        left.legend(loc="best", fontsize=8)
    left.grid(alpha=0.3)
    for key, label in (("eval_rollout_well_formed", "well-formed calls"), ("eval_rollout_valid", "valid calls"),
                       ("eval_rollout_gIoU", "gIoU"), ("eval_sampled_gIoU", "gIoU, sampled (training temperature)")):
        points = [(r["step"], r[key]) for r in rollouts if key in r]
        if points:
            right.plot(*zip(*points), marker="o", label=label)
    right.set(xlabel="step", ylim=(0, 1.02), title="greedy rollouts on held-out samples")
    right.grid(alpha=0.3)
    if rollouts:
        right.legend(loc="best", fontsize=8)
    else:
        right.text(0.5, 0.5, "no rollouts in this run", ha="center", va="center", transform=right.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_runs(logs: dict[str, str | Path], out: str | Path, key: str = "eval_rollout_gIoU",
              ylabel: str = "held-out gIoU (greedy)", title: str | None = None) -> Path:
    """One curve per run (label -> log.jsonl) of `key` against the step: seeds of one recipe side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, log in logs.items():
        rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
