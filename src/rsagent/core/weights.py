"""Loading pretrained weights from a hub id or a local folder, with one clear line on any failure.

No torch or transformers import here: callers pass the loader. A local path is checked before any
library sees it (folder, config.json, weights, model type); a hub id is tried in the local
Hugging Face cache first and on the hub only if the hub answers within seconds (transformers
otherwise retries for ~30 s when there is no network).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from rsagent.core.errors import ModelLoadError

T = TypeVar("T")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Cheap check before letting transformers try the hub."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach what a direct socket cannot: let the real request decide
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_path(model: str) -> bool:
    return (os.path.isabs(model) or model.startswith((".", "~")) or "\\" in model
            or model.count("/") > 1 or model.endswith("/"))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_pretrained(load: Callable[..., T], model: str, *, what: str, how: str,
                    model_types: Sequence[str], need_weights: bool = True) -> T:
    """`load(source, **kwargs)` for a local folder or a hub id; every failure is one `ModelLoadError` line.

    what: the model's kind for messages ("SAM2 model"); how: how to pass a local folder instead;
    model_types: the config.json `model_type`s this loader accepts.
    """
    path = Path(model).expanduser()
    if path.exists() or looks_like_path(model):
        if not path.is_dir():
            state = "no such directory" if not path.exists() else "not a directory"
            raise ModelLoadError(f"cannot load {what} {model!r}: {state}; {how}")
        missing = [n for n in ("config.json",) if not (path / n).is_file()]
        if need_weights and not any((path / n).is_file() for n in WEIGHT_FILES):
            missing.append("model.safetensors")
        if missing:
            raise ModelLoadError(f"cannot load {what} {model!r}: the directory has no "
                                 f"{' and no '.join(missing)}; {how}")
        try:
            model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"cannot load {what} {model!r}: config.json is unreadable "
                                 f"({first_line(exc)}); {how}") from None
        if model_type not in model_types:
            raise ModelLoadError(f"cannot load {what} {model!r}: config.json describes a {model_type!r} "
                                 f"model, not {' or '.join(map(repr, model_types))}; {how}")
        sources, source, is_hub = [dict(local_files_only=True)], str(path), False
    else:  # a hub id: the local HF cache first, then the hub if it can be reached
        sources = [dict(local_files_only=True)] + ([dict()] if hub_reachable() else [])
        source, is_hub = model, True
    error: BaseException | None = None
    for kwargs in sources:
        try:
            return load(source, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
            error = exc
    if is_hub and len(sources) == 1:
        reason = "not in the local Hugging Face cache and the hub cannot be reached"
    else:
        reason = first_line(error) if error is not None else "unknown error"
    fetch = f"download it where there is network (hf download {model} --local-dir DIR) and " if is_hub else ""
    raise ModelLoadError(f"cannot load {what} {model!r}: {reason}; {fetch}{how}")
