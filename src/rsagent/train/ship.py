"""Ship a trained checkpoint as the packaged demo agent: copy only what inference reads, optionally
store the weights in bf16 (half the size; the policy upcasts them at load), and write agent.json."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

from rsagent.core.errors import ModelLoadError
from rsagent.policies.demo_agent import AGENT_DIR, AGENT_INFO, INFERENCE_FILES

_STORAGE = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def ship_agent(src: str | Path, dst: str | Path = AGENT_DIR, *, dtype: str = "bfloat16",
               test_giou: float | None = None, evaluation: str | None = None, max_new_tokens: int = 200,
               max_turns: int = 8) -> Path:
    """Replace `dst` with the inference files of the checkpoint folder `src` (a `train sft|rl` output).

    test_giou / evaluation: the measured test gIoU and how it was measured (recorded, not computed here);
    max_new_tokens / max_turns: the decoding budget it was trained with, which `--policy demo` uses.
    """
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    missing = [n for n in INFERENCE_FILES if not (src / n).is_file()]
    if missing:
        raise ModelLoadError(f"{src}: not a complete checkpoint folder, it lacks {', '.join(missing)}")
    if dtype not in _STORAGE:
        raise ValueError(f"unknown storage dtype {dtype!r}; choose one of {', '.join(_STORAGE)}")
    dtype = _STORAGE[dtype]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        for name in INFERENCE_FILES:
            if name != "model.safetensors":
                shutil.copyfile(src / name, tmp / name)
        tensors = load_file(src / "model.safetensors")
        target = getattr(torch, dtype)
        save_file({k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()},
                  tmp / "model.safetensors", metadata={"format": "pt"})
        info = {"source": str(src), "storage_dtype": dtype, "temperature": 0.0, "max_new_tokens": max_new_tokens,
                "max_turns": max_turns, "test_gIoU": test_giou, "evaluation": evaluation,
                "shipped": datetime.date.today().isoformat()}
        (tmp / AGENT_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        for path in tmp.iterdir():  # readable by everyone, like any installed file (mkdtemp makes 0700)
            path.chmod(0o644)
        tmp.chmod(0o755)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)  # nothing stale from an earlier agent stays behind
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst
