"""The trained shapes agent that ships inside the package (`--policy demo`, `rsagent demo`).

A tiny Qwen2.5-VL trained by SFT then RL on the procedural shapes domain (docs/shapes.md). Its folder
is package data, written by `scripts/ship_demo_agent.py` (`rsagent.train.ship`); `agent.json` says
where it came from and the settings it was trained with. It knows the shapes domain only.
"""

from __future__ import annotations

import json
from pathlib import Path

from rsagent.core.errors import ModelLoadError

AGENT_DIR = Path(__file__).resolve().parent.parent / "agents" / "shapes_demo"
AGENT_INFO = "agent.json"
# everything the qwen policy reads from a model folder (the chat template is the project's own)
INFERENCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                   "processor_config.json", "rsagent_pixels.json")


def demo_agent_dir() -> Path:
    """The packaged agent's folder; a clear error when this installation lacks its files."""
    missing = [n for n in (*INFERENCE_FILES, AGENT_INFO) if not (AGENT_DIR / n).is_file()]
    if missing:
        raise ModelLoadError(f"the shipped demo agent is missing from this installation ({AGENT_DIR} lacks "
                             f"{', '.join(missing)}); reinstall rsagent, or ship one with "
                             "scripts/ship_demo_agent.py CHECKPOINT_DIR")
    return AGENT_DIR


def demo_agent_info() -> dict:
    """agent.json: source checkpoint, storage dtype, decoding settings, measured test gIoU, date."""
    return json.loads((demo_agent_dir() / AGENT_INFO).read_text(encoding="utf-8"))


def demo_policy(device: str | None = None, dtype: str | None = None, reuse_cache: bool = True):
    """The qwen policy on the packaged agent with the settings it was trained with: greedy, its token
    budget and pixel limits (rsagent_pixels.json); CPU unless `device` says otherwise. Weights stored
    in bf16 are upcast at load to `dtype` (default: float32 on CPU, bfloat16 on CUDA)."""
    from rsagent.policies.qwen import QwenConfig, QwenPolicy  # torch: only when the agent is really used

    info = demo_agent_info()
    policy = QwenPolicy(QwenConfig(model=str(demo_agent_dir()), device=device or "cpu", dtype=dtype,
                                 temperature=0.0, max_new_tokens=int(info["max_new_tokens"]),
                                 reuse_cache=reuse_cache))
    policy.model_label = "shipped shapes agent"  # not the install path, which differs per machine
    return policy
