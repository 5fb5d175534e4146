"""Reading one assistant answer: `<think>...</think>` then exactly one `<tool_call>{json}</tool_call>`.

Never raises. Tolerant where it is harmless (whitespace, a code fence inside the tool call, an
`arguments` given as a JSON string); every departure from the strict protocol clears `format_ok`,
which the format reward reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_ANSWER_CHARS = 32_000  # longer answers are refused before any regex or JSON work
MAX_CALL_CHARS = 8_000
MAX_DEPTH = 6  # {"arguments": {"points": [[x, y]]}} is 4 deep; deeper is never a valid call

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_STRICT = re.compile(r"\s*<think>.*?</think>\s*<tool_call>.*?</tool_call>\s*", re.DOTALL)


@dataclass
class ParsedAnswer:
    think: str | None
    call: dict | None  # {"name": str, "arguments": dict} when well-formed
    error: str | None  # why no call could be read
    format_ok: bool


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a tool call")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} overflows: numbers must be finite")
    return value


def _loads(text: str) -> object:
    """JSON with NaN, Infinity and overflowing numbers refused, so the record stays valid JSON."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _depth(value: object) -> int:
    """Nesting depth, iteratively (a recursive walk is what deep nesting attacks)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def parse_answer(text: object) -> ParsedAnswer:
    if not isinstance(text, str):
        return ParsedAnswer(None, None, f"the answer must be text, got {type(text).__name__}", False)
    if len(text) > MAX_ANSWER_CHARS:
        return ParsedAnswer(None, None, f"the answer is {len(text)} characters, over the limit of {MAX_ANSWER_CHARS}", False)
    thinks = _THINK.findall(text)
    think = thinks[0].strip() if thinks else None
    calls = _CALL.findall(text)
    strict = len(thinks) == 1 and len(calls) == 1 and _STRICT.fullmatch(text) is not None
    if not calls:
        hint = " (found <tool_call> without </tool_call>)" if "<tool_call>" in text else ""
        return ParsedAnswer(think, None, f"no <tool_call>...</tool_call> block in the answer{hint}", False)
    if len(calls) > 1:
        return ParsedAnswer(think, None, f"{len(calls)} tool calls in one answer; call exactly one tool per turn", False)
    body = calls[0].strip()
    fence = _FENCE.match(body)
    if fence:
        body, strict = fence.group(1), False
    if len(body) > MAX_CALL_CHARS:
        return ParsedAnswer(think, None, f"the tool call is {len(body)} characters, over the limit of {MAX_CALL_CHARS}", False)
    try:
        call = _loads(body)
    except (ValueError, RecursionError) as exc:
        return ParsedAnswer(think, None, f"the tool call is not valid JSON ({str(exc)[:120]})", False)
    if not isinstance(call, dict):
        return ParsedAnswer(think, None, "the tool call must be a JSON object with \"name\" and \"arguments\"", False)
    name, args = call.get("name"), call.get("arguments", {})
    if not isinstance(name, str):
        return ParsedAnswer(think, None, "the tool call has no string \"name\"", False)
    if isinstance(args, str):  # OpenAI-style arguments serialised as a string
        strict = False
        try:
            args = _loads(args)
        except (ValueError, RecursionError):
            return ParsedAnswer(think, None, "\"arguments\" is a string that is not valid JSON", False)
    if not isinstance(args, dict):
        return ParsedAnswer(think, None, "\"arguments\" must be a JSON object", False)
    if _depth(args) > MAX_DEPTH - 1:
        return ParsedAnswer(think, None, "the tool call's arguments are nested too deeply", False)
    extra = set(call) - {"name", "arguments"}
    if extra:
        strict = False
    return ParsedAnswer(think, {"name": name, "arguments": args}, None, strict and think is not None)
