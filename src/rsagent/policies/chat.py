"""The prompt protocol as chat messages, and the project's chat template that renders them.

One conversation shape for every consumer: the local Qwen policy renders it with
`chat_template.jinja` (tools in the Hermes style, tool observations as `<tool_response>` user turns
with their images), the OpenAI-compatible policy sends the same texts and images over HTTP, and SFT
export and RL tokenisation use the same template file.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np

from rsagent.env.episode import Episode

CHAT_TEMPLATE = (files("rsagent.policies") / "chat_template.jinja").read_text(encoding="utf-8")
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>\n", "\n</tool_response>"  # as the template writes them


def render_images(episode: Episode, messages: list[dict]) -> list[dict]:
    """`messages` (from `Episode.messages()`) with each image reference replaced by the rendered image:
    {"type": "image", "image": (H, W, 3) uint8 array at the view's displayed size}."""
    return [{"role": m["role"], "content": [{"type": "image", "image": episode.render(p["ref"])}
                                            if p["type"] == "image" else p for p in m["content"]]}
            for m in messages]


def chat_images(messages: list[dict]) -> list[np.ndarray]:
    """The images of `messages`, in the order the template places their placeholders."""
    return [part["image"] for msg in messages if not isinstance(msg["content"], str)
            for part in msg["content"] if part.get("type") == "image"]


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> str:
    """The prompt text for `messages` under the project's template (image parts become placeholders)."""
    return tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
