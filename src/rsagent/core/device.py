"""Which torch device a training command runs on."""

from __future__ import annotations

from rsagent.core.errors import RsagentError


def resolve_device(device: str | None) -> str:
    """"cpu" or "cuda"; None: cuda when a CUDA device is available. Asking for cuda without one is an error
    (pick GPUs with CUDA_VISIBLE_DEVICES)."""
    import torch

    if device not in (None, "cpu", "cuda"):
        raise RsagentError(f"device must be cpu or cuda, got {device!r} (pick GPUs with CUDA_VISIBLE_DEVICES)")
    if device == "cuda" and not torch.cuda.is_available():
        raise RsagentError("device cuda: no CUDA device is available")
    return device or ("cuda" if torch.cuda.is_available() else "cpu")
