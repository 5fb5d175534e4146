"""What a shapes model's visual tokens tell about each shape: linear probes on the frozen tokens.

    .venv/bin/python bench/shapes_token_probe.py MODEL [MODEL ...] [--train 2400 --test 600] [--out FILE.json]

Grounding can only read off the visual tokens what they carry (docs/shapes.md, "2026-11-28 (m)"): its
language side learned to pick by a named colour as well as the tokens carry colour, and kinds hardly at all.
This measures what they carry, per shape: each shape's merged visual tokens pooled by the share of each
token's cell it covers (`token_cover`), then a linear classifier per attribute (kind, colour, size word),
fitted on the shapes of `--train` `train` scenes and scored on those of `--test` `test` scenes (both
outside the held-out colour-kind pairs, as in the dataset). Nothing is trained in the model; a probe takes about a minute a model on
one thread. Accuracy is reported overall and by size word (tiny shapes are the hardest to see), beside
chance (the most frequent class of the test shapes).
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from common import add_common_args, finish, start, table
from rsagent.data.shapes.generate import HELD_OUT_PAIRS, rng_for
from rsagent.data.shapes.scene import COLOURS, KINDS, SIZES, SceneConfig, sample_scene
from rsagent.policies.qwen import load_processor, load_qwen_model, pixel_limits
from rsagent.shapes_vision import visual_tokens
from rsagent.train.ground_data import token_cover

ATTRIBUTES = {"kind": list(KINDS), "colour": list(COLOURS), "size": list(SIZES)}
_FIRST_SCENE = 7_000_000  # far from the seeds of perception pretraining, grounding and synthesis


def scenes(split: str, n: int, size: int = 112) -> list:
    banned = frozenset(HELD_OUT_PAIRS)  # as the dataset's `train` and `test` (only `test-novel` shows them)
    return [sample_scene(rng_for(split, _FIRST_SCENE + i), SceneConfig(size=size), banned=banned) for i in range(n)]


@torch.inference_mode()
def shape_features(model, processor, scene_list: list, batch: int = 64) -> tuple[np.ndarray, list]:
    """(features, shapes): one row per shape of every scene, its tokens averaged weighted by cover."""
    vision = model.config.vision_config
    cell = vision.patch_size * vision.spatial_merge_size
    rows, shapes = [], []
    for start_at in range(0, len(scene_list), batch):
        chunk = scene_list[start_at:start_at + batch]
        tokens = visual_tokens(model.model.visual, processor, [s.image for s in chunk]).float()
        tokens = tokens.view(len(chunk), -1, tokens.shape[-1]).numpy()
        for scene, scene_tokens in zip(chunk, tokens):
            for shape in scene.shapes:
                cover = token_cover(shape.mask, cell)
                rows.append(cover @ scene_tokens / cover.sum())
                shapes.append(shape)
    return np.asarray(rows, np.float32), shapes


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 500, seed: int = 0) -> torch.nn.Linear:
    """A softmax classifier on standardised features, full-batch Adam (the features are few and small)."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(xt), yt).backward()
        opt.step()
    return probe


def probe_model(path: str, train_scenes: list, test_scenes: list) -> dict:
    model = load_qwen_model(path, "cpu", torch.float32)
    processor = load_processor(path, *pixel_limits(path))
    x_train, s_train = shape_features(model, processor, train_scenes)
    x_test, s_test = shape_features(model, processor, test_scenes)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    sizes = np.array([s.size for s in s_test])
    out = {"model": path, "train_shapes": len(s_train), "test_shapes": len(s_test)}
    for name, classes in ATTRIBUTES.items():
        label = lambda shapes: np.array([classes.index(getattr(s, name)) for s in shapes])  # noqa: E731
        y_train, y_test = label(s_train), label(s_test)
        probe = fit_probe(x_train, y_train, len(classes))
        with torch.no_grad():
            hit = probe(torch.from_numpy(x_test)).argmax(-1).numpy() == y_test
        out[name] = {"accuracy": float(hit.mean()), "chance": Counter(y_test).most_common(1)[0][1] / len(y_test),
                     "by_size": {w: float(hit[sizes == w].mean()) for w in SIZES if (sizes == w).any()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model folders (rsagent shapes model, train ground, ...)")
    parser.add_argument("--train", type=int, default=2400, help="train scenes the probes are fitted on")
    parser.add_argument("--test", type=int, default=600, help="test scenes the probes are scored on")
    add_common_args(parser)
    args = parser.parse_args()
    info = start(args)
    train_scenes, test_scenes = scenes("train", args.train), scenes("test", args.test)
    results = [probe_model(path, train_scenes, test_scenes) for path in args.models]
    print(table(["model", "shapes (test)", *[f"{a} (chance)" for a in ATTRIBUTES], "kind: tiny / small / medium / large"],
                [[r["model"], r["test_shapes"], *[f"{r[a]['accuracy']:.3f} ({r[a]['chance']:.2f})" for a in ATTRIBUTES],
                  " / ".join(f"{v:.2f}" for v in r["kind"]["by_size"].values())] for r in results]))
    finish(args, info, {"probes": results})


if __name__ == "__main__":
    main()
