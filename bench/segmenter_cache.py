"""Encode once, prompt many: the cost of set_image + first predict vs a second predict on a cached image.

    .venv/bin/python bench/segmenter_cache.py [--images 4] [--segmenters grabcut,sam2]
        [--sam2-config tiny|tiny-size|large-size] [--sam2-model PATH_OR_ID] [--device cpu]

For each segmenter and each of the first `--images` COCO128 images (after one warm-up image that is
not counted): time `set_image` (a new cache key, so the image is encoded) and a first `predict` with a
box, then a second `predict` with a different prompt (a click plus another box) on the same, already
encoded image. Prints the mean times and the ratio second / (set_image + first predict); the design
asks for a small fraction. The last columns time the same through the environment: a first and a
second `segment` tool call (`Episode.step`) on a freshly encoded view.

sam2 runs by default on the tiny random-weight config saved to a temporary folder and loaded back
(`--sam2-config tiny-size` / `large-size` build random-weight models of the sam2.1-hiera-tiny / -large
architectures instead, for realistic timings without the weights; large-size encodes in about 20 s per
image on a 2-core CPU); `--sam2-model` loads a real checkpoint (local folder or hub id) instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.core.image import load_image
from rsagent.segmenters import make_segmenter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg" / "images" / "train2017"


def build_sam2(args, tmp: str):
    """The sam2 segmenter: a real checkpoint, or a random-weight config saved to `tmp` and loaded back."""
    if args.sam2_model:
        return make_segmenter("sam2", model=args.sam2_model, device=args.device), args.sam2_model
    import torch
    from transformers import Sam2Model

    from rsagent.segmenters.sam2 import sam2_config

    torch.manual_seed(0)
    model = Sam2Model(sam2_config(args.sam2_config))
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp)
    del model
    label = f"random {args.sam2_config} ({n_params / 1e6:.2f} M params)"
    return make_segmenter("sam2", model=tmp, device=args.device), label


def prompts(shape: tuple[int, int]):
    """A first prompt (a central box) and a different second one (a click and a smaller box)."""
    h, w = shape
    first = dict(box=(w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    second = dict(box=(w // 3, h // 3, 2 * w // 3, 2 * h // 3),
                  points=np.array([[w // 2, h // 2]]), labels=np.array([1]))
    return first, second


def wait(seg) -> None:
    """CUDA runs asynchronously: wait for the encode's queued kernels before reading the clock
    (a predict waits by itself, when its masks are copied to the CPU)."""
    device = getattr(seg, "device", None)
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def time_segmenter(seg, images: list[np.ndarray], warmup: np.ndarray) -> dict[str, list[float]]:
    first_p, second_p = prompts(warmup.shape[:2])
    seg.set_image(warmup, key=("warmup",))
    seg.predict(**first_p)
    seg.predict(**second_p)
    times: dict[str, list[float]] = {"encode": [], "first": [], "second": []}
    for i, img in enumerate(images):
        first_p, second_p = prompts(img.shape[:2])
        before = seg.encode_count
        t0 = time.perf_counter()
        seg.set_image(img, key=("bench", i))
        wait(seg)
        t1 = time.perf_counter()
        seg.predict(**first_p)
        t2 = time.perf_counter()
        seg.set_image(img, key=("bench", i))  # a cache hit: must not encode again
        seg.predict(**second_p)
        t3 = time.perf_counter()
        assert seg.encode_count == before + 1, "the second set_image on the same key re-encoded"
        times["encode"].append(t1 - t0)
        times["first"].append(t2 - t0)
        times["second"].append(t3 - t2)
    return times


def time_tool_calls(seg, images: list[np.ndarray]) -> tuple[float, float]:
    """The same through the environment: the first and a second `segment` tool call on view 0
    (parsing, validation, set_image, predict, RLE and the candidate record included)."""
    from rsagent.env.episode import Episode, EpisodeTask
    from rsagent.policies.base import format_answer

    first, second = [], []
    for i, img in enumerate(images):
        first_p, second_p = prompts(img.shape[:2])
        ep = Episode(EpisodeTask(img, "bench", f"env-{i}-{time.perf_counter_ns()}"), seg)
        calls = [{"box": list(first_p["box"])},
                 {"box": list(second_p["box"]), "points": second_p["points"].tolist(), "labels": [1]}]
        seg._cache.clear()  # a fresh encode for the first call, as for a new image
        for args, out in zip(calls, (first, second)):
            t0 = time.perf_counter()
            ep.step(format_answer("bench", "segment", args))
            out.append(time.perf_counter() - t0)
        assert ep.turns[-1].error is None, ep.turns[-1].error
    return statistics.mean(first), statistics.mean(second)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DATA, help="folder of .jpg images (COCO128 train2017)")
    parser.add_argument("--images", type=int, default=4, help="timed images (one more is used to warm up)")
    parser.add_argument("--segmenters", default="grabcut,sam2")
    parser.add_argument("--sam2-model", default=None, help="a real checkpoint: local folder or hub id")
    parser.add_argument("--sam2-config", default="tiny", choices=("tiny", "tiny-size", "large-size"),
                        help="random-weight architecture when --sam2-model is not given")
    parser.add_argument("--device", default=None, help="sam2 device (default: cuda if available, else cpu)")
    args = parser.parse_args()

    files = sorted(args.root.glob("*.jpg"))[: args.images + 1]
    if len(files) < 2:
        print(f"need at least 2 images in {args.root}", file=sys.stderr)
        return 2
    images = [load_image(f) for f in files]
    warmup, timed = images[0], images[1:]
    print(f"{len(timed)} timed images from {args.root} (+1 warm-up), sizes "
          f"{sorted({im.shape[:2] for im in timed})}")
    print(f"{'segmenter':<60} {'set_image':>10} {'set+1st':>10} {'2nd':>10} {'2nd/(set+1st)':>14}"
          f" {'tool 1st':>9} {'tool 2nd':>9} {'ratio':>6}")
    status = 0
    with tempfile.TemporaryDirectory(prefix="rsagent_sam2_") as tmp:
        for name in [s.strip() for s in args.segmenters.split(",") if s.strip()]:
            try:
                if name == "sam2":
                    seg, label = build_sam2(args, tmp)
                    label = f"sam2 {label}"
                else:
                    seg = make_segmenter(name)
                    label = seg.identifier
            except (ImportError, RsagentError, ValueError) as exc:
                print(f"{name:<60} skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                status = 1
                continue
            t = time_segmenter(seg, timed, warmup)
            enc, first, second = (statistics.mean(t[k]) for k in ("encode", "first", "second"))
            tool1, tool2 = time_tool_calls(seg, timed)
            print(f"{label[:60]:<60} {enc:>9.3f}s {first:>9.3f}s {second:>9.4f}s {second / first:>14.3f}"
                  f" {tool1:>8.3f}s {tool2:>8.3f}s {tool2 / tool1:>6.3f}")
            del seg
    return status


if __name__ == "__main__":
    sys.exit(main())
