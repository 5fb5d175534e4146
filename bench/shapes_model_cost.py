"""Cost of the shapes model on agent trajectories: tokens per training sequence, forward/backward seconds.

    .venv/bin/python bench/shapes_model_cost.py [--model DIR] [--episodes 12]

Oracle episodes (8-turn budget, grabcut) on `train` scenes are rendered exactly as the qwen policy
renders them (the project's chat template, views at the qwen2.5-vl frame's size, query and tools in
the system prompt) and run through the model with labels on the assistant turns, batch 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rsagent import EpisodeConfig, EpisodeTask, OracleConfig, OraclePolicy, make_segmenter, run_episodes
from rsagent.core.frames import SmartResizeFrame
from rsagent.core.mask import GroundTruth
from rsagent.data.shapes.generate import generate
from rsagent.env.episode import Episode
from rsagent.policies.chat import chat_images, render_chat, render_images
from rsagent.policies.qwen import load_processor, load_qwen_model
from rsagent.shapes_model import build_shapes_model, describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        processor, model = load_processor(args.model), load_qwen_model(args.model, "cpu", torch.float32)
    else:
        model, processor = build_shapes_model(0)
    frame = SmartResizeFrame()
    policy = OraclePolicy(OracleConfig())
    policy.frame = frame
    samples = [generate("train", 20_000_000 + i) for i in range(args.episodes)]
    segmenter = make_segmenter("grabcut")
    episodes = []
    for s in samples:
        ep = Episode(EpisodeTask(s.scene.image, s.query, s.sample_id, GroundTruth(s.mask)), segmenter,
                     EpisodeConfig(max_turns=8), frame)
        episodes.append(ep)
    # the oracle's answers, replayed on our own episodes to have their final state at hand
    trajs = run_episodes(policy, segmenter, [ep.task for ep in episodes], EpisodeConfig(max_turns=8), progress=False)
    tokens, images, visual, fwd, fwdbwd, turns = [], [], [], [], [], []
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    model.train()
    for ep, traj in zip(episodes, trajs):
        for turn in traj.turns:
            ep.step(turn.assistant)
        msgs = render_images(ep, ep.messages())
        text = render_chat(processor.tokenizer, msgs, add_generation_prompt=False)
        pics = chat_images(msgs)
        inputs = processor(text=[text], images=pics, return_tensors="pt")
        inputs["labels"] = inputs["input_ids"].clone()
        tokens.append(int(inputs["input_ids"].shape[1]))
        images.append(len(pics))
        visual.append(int((inputs["input_ids"] == pad).sum()))
        turns.append(len(traj.turns))
        with torch.no_grad():
            t = time.perf_counter(); model(**inputs); fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        fwdbwd.append(time.perf_counter() - t)
        model.zero_grad()
    info = describe(model, processor)
    print(f"model: {info['parameters']:,} parameters ({info['vision_parameters']:,} vision), vocab {info['vocab']}")
    print(f"episodes {len(tokens)}: turns {np.mean(turns):.1f}, images {np.mean(images):.1f}, tokens per sequence "
          f"mean {np.mean(tokens):.0f} (min {min(tokens)}, max {max(tokens)}); of them visual {np.mean(visual):.0f}")
    print(f"forward {np.median(fwd) * 1000:.0f} ms, forward+backward {np.median(fwdbwd) * 1000:.0f} ms per sequence "
          f"(median, batch 1, {args.threads} threads)")


if __name__ == "__main__":
    main()
