"""Per-turn policy time of the qwen policy with the KV cache kept across turns vs re-encoding everything.

The Qwen model really generates each turn (`--max-new-tokens`, stopping early only on its own end
token); the oracle then decides what the episode does, so every turn brings back a real overlay
image, as a working agent's would. Both modes see the same tokens and images; the ratio compares
their policy seconds at turn 4 and later, in one run.

    python bench/qwen_kv_cache.py                         # tiny random model, CPU, grabcut
    python bench/qwen_kv_cache.py --size 7b --segmenter sam2 --sam2-size large-size --device cuda

Images: COCO128 from ../shared/data (or --data DIR with images/ and labels/ in YOLO-seg layout).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from rsagent.core.image import load_image
from rsagent.core.mask import GroundTruth, polygons_to_mask
from rsagent.data.yoloseg import load_yolo_seg
from rsagent.env.episode import EpisodeConfig, EpisodeTask
from rsagent.policies.base import Policy
from rsagent.policies.oracle import OracleConfig, OraclePolicy
from rsagent.policies.qwen import QwenConfig, QwenPolicy, make_processor
from rsagent.policies.qwen_random import (
    qwen25vl_7b_config,
    qwen_tokenizer,
    tiny_qwen_config,
)
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg"


class ModelThenOracle(Policy):
    """The Qwen policy generates (timed per turn); the oracle's answer is what the episode gets."""

    name = "qwen-timed"

    def __init__(self, qwen: QwenPolicy, oracle: OraclePolicy) -> None:
        self.qwen, self.oracle, self.frame = qwen, oracle, qwen.frame
        self.seconds: dict[int, list[float]] = defaultdict(list)
        self.answers: list[str] = []  # what the model said, to compare the two modes

    def act(self, episodes):
        turn = len(episodes[0].turns) + 1
        if self.qwen.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.answers += self.qwen.act(episodes)
        if self.qwen.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds[turn].append(time.perf_counter() - t0)
        return self.oracle.act(episodes)


def build_model(size: str, device: str, dtype: torch.dtype, layers: int | None = None):
    config = tiny_qwen_config() if size == "tiny" else qwen25vl_7b_config()
    if layers is not None:  # the same widths with fewer text layers (bench/gpu.py: what the layers cost)
        text = config.text_config
        text.num_hidden_layers, text.layer_types = layers, text.layer_types[:layers]
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()


def tasks_from(data: Path, n: int) -> list[EpisodeTask]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        targets = load_yolo_seg(data)
    targets = sorted(targets, key=lambda t: -float(np.ptp(t.polygon[:, 0]) * np.ptp(t.polygon[:, 1])))[:n]
    tasks = []
    for t in targets:
        image = load_image(t.image_path)
        gt = polygons_to_mask([t.polygon * [t.width, t.height]], t.height, t.width)
        tasks.append(EpisodeTask(image, "the object", t.sample_id, GroundTruth(gt)))
    return tasks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "7b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--episodes", type=int, default=4, help="episodes advanced together (one batch)")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-pixels", type=int, default=1280 * 28 * 28)
    ap.add_argument("--segmenter", default="grabcut", choices=["grabcut", "sam2"])
    ap.add_argument("--sam2-size", default="tiny", help="random SAM2 of this size (sam2_config names)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"no images under {args.data}; pass --data", file=sys.stderr)
        return 2
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype] if args.dtype else (
        torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    t0 = time.perf_counter()
    model = build_model(args.size, args.device, dtype)
    processor = make_processor(qwen_tokenizer(), max_pixels=args.max_pixels)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random Qwen2.5-VL ({args.size}, {n_params / 1e9:.2f} B params, {dtype}) on {args.device}, "
          f"built in {time.perf_counter() - t0:.1f} s")
    if args.segmenter == "sam2":
        import tempfile

        from transformers import Sam2Model

        from rsagent.segmenters.sam2 import sam2_config

        torch.manual_seed(0)
        folder = tempfile.mkdtemp(prefix="random-sam2-")
        Sam2Model(sam2_config(args.sam2_size)).save_pretrained(folder)
        segmenter = make_segmenter("sam2", model=folder, device=args.device)
    else:
        segmenter = make_segmenter("grabcut")
    tasks = tasks_from(args.data, args.episodes)
    config = EpisodeConfig(max_turns=args.turns)
    results = {}
    for reuse in (True, False, True):  # reuse twice: the first run warms up kernels and caches
        qwen = QwenPolicy(QwenConfig(max_new_tokens=args.max_new_tokens, max_pixels=args.max_pixels,
                                     reuse_cache=reuse, device=args.device), model=model, processor=processor)
        policy = ModelThenOracle(qwen, OraclePolicy(OracleConfig(target_iou=1.01, patience=99)))
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        run_episodes(policy, segmenter, tasks, config, batch_size=args.episodes, progress=False)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        results[reuse] = (dict(policy.seconds), qwen.stats, peak, policy.answers)
    print(f"{len(tasks)} episodes in one batch, {args.turns} turns, up to {args.max_new_tokens} new tokens per answer, "
          f"images up to {args.max_pixels} px, segmenter {segmenter.identifier}")
    print("turn  reuse_s  reencode_s  ratio")
    reuse_s, fresh_s = results[True][0], results[False][0]
    for turn in sorted(reuse_s):
        r, f = float(np.mean(reuse_s[turn])), float(np.mean(fresh_s.get(turn, [np.nan])))
        print(f"{turn:4d}  {r:7.3f}  {f:10.3f}  {r / f:5.3f}")
    late = [t for t in reuse_s if t >= 4 and t in fresh_s]
    r_late = sum(float(np.mean(reuse_s[t])) for t in late)
    f_late = sum(float(np.mean(fresh_s[t])) for t in late)
    for reuse, label in ((True, "reuse"), (False, "re-encode")):
        stats, peak = results[reuse][1], results[reuse][2]
        print(f"{label:9s}: prefill tokens {stats['prefill_tokens']}, generated {stats['generated_tokens']}, "
              f"peak GPU memory {peak:.1f} GiB")
    same = sum(a == b for a, b in zip(results[True][3], results[False][3]))
    print(f"model answers identical in both modes: {same}/{len(results[True][3])} ({dtype})")
    print(f"turns >= 4: reuse {r_late:.3f} s vs re-encode {f_late:.3f} s per batch; ratio {r_late / f_late:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
