"""What the benchmarks here share: the machine they ran on (with its load, since these machines are often
shared), a Markdown table printer, the `--out FILE.json` writer, the shapes tasks and the tiny agent."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINED_AGENT = REPO / "runs" / "rlcheck-s0" / "rl"  # the RL run the shipped demo agent was copied from


def machine() -> dict:
    """CPU count and model, the load average now, the GPU if any, library versions, date and command."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "cpu": cpu, "load": [round(x, 2) for x in os.getloadavg()],
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def describe_machine(info: dict) -> str:
    gpu = f", GPU {info['gpu']} ({info['gpu_memory_gib']} GiB)" if "gpu" in info else ", no GPU"
    return (f"{info['cpus']} CPUs ({info['cpu']}){gpu}; load average {' '.join(map(str, info['load']))}; "
            f"OMP_NUM_THREADS={info['omp_threads']}, torch threads {info.get('torch_threads', '-')}")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats as given by the caller (format them first), everything else str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser, threads: int = 1) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write the numbers, machine and command as JSON")
    parser.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default {threads})")


def start(args: argparse.Namespace) -> dict:
    """Set torch's threads and print the machine; returns its description as it was at the start."""
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    info = machine()
    print(f"machine: {describe_machine(info)}", flush=True)
    return info


def finish(args: argparse.Namespace, info: dict, results: dict) -> None:
    """Print the load at the end (it changes during a run) and write --out."""
    end_load = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end: {' '.join(map(str, end_load))}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": {**info, "load_at_end": end_load}, "args": {k: str(v) if isinstance(v, Path) else v
                                                                         for k, v in vars(args).items()},
               "results": results}
        args.out.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
        print(f"wrote {args.out}")


def shapes_tasks(split: str, n: int, start_index: int = 0, size: tuple[int, int] | None = None) -> list:
    """Episode tasks of shapes samples start..start+n-1 of `split` (generated in memory, the same samples
    `rsagent shapes make` writes); `size` (width, height) enlarges scene and mask, for full-size models."""
    import cv2

    from rsagent.core.mask import GroundTruth
    from rsagent.data.shapes.generate import generate
    from rsagent.env.episode import EpisodeTask

    tasks = []
    for i in range(start_index, start_index + n):
        s = generate(split, i)
        image, mask = s.scene.image, s.mask
        if size is not None:
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype("uint8"), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        tasks.append(EpisodeTask(image, s.query, s.sample_id, GroundTruth(mask)))
    return tasks


def tiny_agent(model: str, tmp: str) -> tuple[str, str]:
    """(folder, description) of the tiny shapes agent to run: `auto` = the trained RL checkpoint if this
    checkout has it, else the copy shipped in the package; `random` = a fresh random shapes model in `tmp`."""
    if model == "random":
        from rsagent.shapes_model import save_shapes_model

        save_shapes_model(tmp, seed=0)
        return tmp, "a fresh random shapes model (rsagent shapes model)"
    if model == "auto":
        if (TRAINED_AGENT / "model.safetensors").is_file():
            return str(TRAINED_AGENT), f"the trained shapes agent ({TRAINED_AGENT.relative_to(REPO)}, fp32 weights)"
        from rsagent.policies.demo_agent import demo_agent_dir

        return str(demo_agent_dir()), "the shipped shapes agent (--policy demo's weights, bf16 upcast)"
    return model, model
