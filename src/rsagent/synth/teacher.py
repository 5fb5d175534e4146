"""Synthesis' teacher: an OpenAI-compatible multimodal model that writes implicit queries and rewrites
the expert's reasoning, over the openai policy's own HTTP client (`ChatClient`: retries, backoff, the
key redacted, one-line errors, the same preflight).

Queries are never taken on the teacher's word: each one is checked by a second, blind request that
sees the image, the numbered instance list and the query alone (not the claimed answer) and must name
exactly the claimed targets. Rewritten reasoning is advisory: an unusable answer gives None, and the
caller keeps its own text; the tool call is never the teacher's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

from rsagent.core.errors import PolicyError
from rsagent.data.instances import InstanceImage
from rsagent.policies.openai_compat import ChatClient, check_server_settings, content_text, encode_image
from rsagent.synth.queries import GeneratedQuery

__all__ = ["REJECT_REASONS", "Teacher", "TeacherConfig", "TeacherQueries", "instance_list"]

REJECT_REASONS = ("malformed", "duplicate", "unknown_index", "crowd_target", "blind_disagrees", "request_failed")
MIN_REASONING_CHARS = 20  # within synth.filters' default bounds (20-800), so a rewrite never fails a filter
MAX_REASONING_CHARS = 600
_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"\d+")

WRITER_SYSTEM = "You write text queries for a referring segmentation dataset. You answer with JSON only."
BLIND_SYSTEM = "You resolve text queries to the objects of an image they refer to. You answer with JSON only."
REWRITE_SYSTEM = (
    "You write the reasoning of a segmentation agent that works in turns with tools (segment, refine, zoom_in, "
    "submit): before each tool call it says, in its own words, what it sees and why it makes that call.")


@dataclass(frozen=True)
class TeacherConfig:
    base_url: str  # e.g. http://localhost:8000/v1
    model: str  # the model name the server serves
    api_key_env: str | None = "OPENAI_API_KEY"  # NAME of the variable holding the key; None: no key sent
    temperature: float = 0.0
    timeout: float = 60.0  # seconds per attempt
    retries: int = 3  # retries after the first attempt
    seed: int | None = None
    max_tokens: int = 512

    def __post_init__(self) -> None:
        check_server_settings(self.base_url, self.model)
        if self.timeout <= 0 or self.retries < 0 or self.max_tokens < 1:
            raise PolicyError(f"teacher: timeout must be positive, retries at least 0 and max_tokens at least 1; "
                              f"got {self.timeout}, {self.retries}, {self.max_tokens}")


@dataclass
class TeacherQueries:
    """The verified queries of one image and why the others were turned down (every reason, counted)."""

    queries: list[GeneratedQuery] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))


def instance_list(image: InstanceImage) -> str:
    """The numbered instance list both requests show: index, category, box in pixels, crowds marked."""
    lines = [f"The image is {image.width} x {image.height} pixels. Its annotated objects "
             "(index: category, box [x0, y0, x1, y1] in pixels):"]
    for inst in image.instances:
        box = ", ".join(str(round(v)) for v in inst.box)
        crowd = " (crowd: a group, not one object)" if inst.crowd else ""
        lines.append(f"{inst.index}: {inst.category}, box [{box}]{crowd}")
    return "\n".join(lines)


def _writer_text(listing: str, n: int) -> str:
    return (f"{listing}\n\nWrite up to {n} implicit queries about this image. A query must make the reader reason: "
            "describe what the object is for, what it is doing or how it relates to other things, without naming "
            "its category. A query may refer to one object or to several together, and must fit exactly those "
            "objects among all the listed ones, so that anyone who sees the image and this list picks exactly them. "
            "Never refer to an object marked crowd.\n"
            'Answer with a JSON list only: [{"query": "...", "targets": [index, ...]}, ...]')


def _blind_text(listing: str, query: str) -> str:
    return (f"{listing}\n\nQuery: {query}\n\nWhich of the listed objects does this query refer to? Answer with a "
            "JSON list of their indices only, e.g. [2] or [0, 3], or [] if it refers to none of them.")


def _rewrite_text(query: str, observation: str | None, call: dict) -> str:
    seen = (f"The last tool observation: {observation}" if observation is not None
            else "No tool has run yet: the picture is the input image.")
    return (f"Query: {query}\n{seen}\nThe tool call the agent makes next: {json.dumps(call, ensure_ascii=False)}\n\n"
            "Write the reasoning that leads to this call: 1 to 3 sentences, in the first person, describing only "
            "what is visible in the picture and said in the text above. Use no number that is not in the "
            "observation or the call. Answer with the reasoning text only: no tags, no tool call.")


def _json_list(text: str) -> list | None:
    """The JSON list an answer holds (the whole answer, a fenced block, or its first `[` to its last `]`)."""
    tries = [text.strip()]
    if fenced := _FENCE.search(text):
        tries.append(fenced.group(1).strip())
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        tries.append(text[start:end + 1])
    for candidate in tries:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, list):
            return value
    return None


def _indices(value) -> list[int] | None:
    """A list of integer indices, or None (booleans and floats are not indices)."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return value


class Teacher:
    def __init__(self, config: TeacherConfig) -> None:
        self.config = config
        self.client = ChatClient(config.base_url, config.model, config.api_key_env, timeout=config.timeout,
                                 retries=config.retries)

    def check(self) -> None:
        """The openai policy's preflight: `PolicyError`, one line, when the server or model is unusable."""
        self.client.check()

    def _ask(self, system: str, image_url: str, text: str) -> str | None:
        """The answer's text to one image and one text, or None when the request failed after its retries."""
        c = self.config
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                 {"type": "text", "text": text}]}]
        params: dict = {"temperature": c.temperature, "max_tokens": c.max_tokens}
        if c.seed is not None:
            params["seed"] = c.seed
        try:
            return content_text(self.client.chat(messages, **params))
        except PolicyError:  # counted by the client; the caller counts or falls back
            return None

    # --- queries ------------------------------------------------------------------------------------
    def write_queries(self, image: np.ndarray, instances: InstanceImage, n: int) -> TeacherQueries:
        """Up to `n` teacher-written queries for `image`, each kept only when a blind request resolves it
        to exactly its targets (all of them listed, none a crowd). Never raises for what the server says."""
        found = TeacherQueries()
        if n < 1:
            return found
        url, listing = encode_image(image), instance_list(instances)
        answer = self._ask(WRITER_SYSTEM, url, _writer_text(listing, n))
        proposals = _json_list(answer) if answer is not None else None
        if proposals is None:
            found.rejected["request_failed" if answer is None else "malformed"] += 1
            return found
        seen: set[str] = set()
        for item in proposals[:n]:
            verdict = self._judge(item, instances, url, listing, seen)
            if isinstance(verdict, GeneratedQuery):
                found.queries.append(verdict)
            else:
                found.rejected[verdict] += 1
        return found

    def _judge(self, item, instances: InstanceImage, url: str, listing: str, seen: set[str]) -> GeneratedQuery | str:
        """The accepted query, or the reason it is turned down; the checks that need no request come first."""
        text = item.get("query") if isinstance(item, dict) else None
        targets = _indices(item.get("targets")) if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip() or targets is None:
            return "malformed"
        text = " ".join(text.split())
        if text.lower() in seen:
            return "duplicate"
        seen.add(text.lower())
        if any(not 0 <= t < len(instances.instances) for t in targets):
            return "unknown_index"
        if any(instances.instances[t].crowd for t in targets):
            return "crowd_target"
        answer = self._ask(BLIND_SYSTEM, url, _blind_text(listing, text))
        if answer is None:
            return "request_failed"
        named = _indices(_json_list(answer))
        if named is None:
            return "malformed"
        if set(named) != set(targets):
            return "blind_disagrees"
        return GeneratedQuery(text, kind="teacher", targets=tuple(sorted(set(targets))),
                              spec={"type": "teacher", "verified_by": "blind resolution"})

    # --- reasoning ------------------------------------------------------------------------------------
    def rewrite_reasoning(self, picture: np.ndarray, query: str, observation: str | None, call: dict) -> str | None:
        """The teacher's reasoning for `call`, from the picture the policy saw last and the previous
        observation; None when the request fails or the answer is unusable (the caller keeps its text)."""
        answer = self._ask(REWRITE_SYSTEM, encode_image(picture), _rewrite_text(query, observation, call))
        if answer is None:
            return None
        text = " ".join(answer.split())
        if not MIN_REASONING_CHARS <= len(text) <= MAX_REASONING_CHARS or any(tag in text for tag in _TAGS):
            return None
        # a number the policy could not have read is one only the ground truth knows
        known = set(_NUMBER.findall(f"{query} {observation or ''} {json.dumps(call)}"))
        if not set(_NUMBER.findall(text)) <= known:
            return None
        return text
