"""The `openai` policy: any OpenAI-compatible chat server with images (vLLM, SGLang, hosted APIs).

One `POST {base_url}/chat/completions` per active episode and turn, the requests of one `act` call
in parallel threads. The conversation is the project's (Episode.messages()) converted to
OpenAI messages: images as base64 data URLs rendered at the coordinate frame's display size, tool
observations as `user` messages wrapped in `<tool_response>` exactly as the project's chat template
wraps them (hosted APIs refuse `role: tool` without a prior `tool_calls`, and the stock Qwen2.5-VL
template does not render tools). No `tools` parameter is sent: the system prompt carries the Hermes
tools block. A server that parsed the tool call itself (`message.tool_calls`) gets its answer
rebuilt into the protocol text.

Standard library HTTP only (urllib). Connection errors, timeouts, HTTP 408/409/429/5xx and malformed
bodies are retried with exponential backoff (a `Retry-After` header wins, both capped); other 4xx
fail at once. A request that still fails raises `PolicyError`, one line, which the runner records
in the episodes it fails. The API key is read from the environment variable named in the config
and never appears in identifiers, errors or trajectories. `ChatClient` holds this HTTP side, so
synthesis' teacher (rsagent.synth.teacher) talks to servers exactly as the policy does.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import io
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import numpy as np
from PIL import Image

from rsagent.core.errors import PolicyError
from rsagent.core.frames import make_frame
from rsagent.core.trajectory import ImageRef
from rsagent.env.episode import Episode
from rsagent.policies.base import Policy, format_answer
from rsagent.policies.chat import TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
SNIPPET_CHARS = 200
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str  # e.g. http://localhost:8000/v1; `/chat/completions` and `/models` are appended as given
    model: str  # the model name the server serves (sent as "model")
    api_key_env: str | None = "OPENAI_API_KEY"  # NAME of the variable holding the key; unset: no Authorization
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int | None = 512  # None: not sent (the server's default)
    timeout: float = 60.0  # seconds per attempt: connect, then each read; the whole body is held to it too
    retries: int = 3  # retries after the first attempt
    backoff: float = 1.0  # seconds before the first retry, doubled each retry
    max_backoff: float = 30.0  # cap on any wait, Retry-After included
    concurrency: int = 8  # parallel requests within one act() call
    frame: str = "qwen2.5-vl"  # coordinate frame (core.frames.make_frame)
    max_pixels: int | None = None  # qwen2.5-vl frame limits; None: the frame's defaults
    min_pixels: int | None = None
    image_format: str = "png"  # png or jpeg
    jpeg_quality: int = 95
    seed: int | None = None  # sent as-is: the same prompt and seed give the same sample where honoured
    extra_body: dict = field(default_factory=dict)  # merged into each request last (e.g. {"top_k": 20})

    def __post_init__(self) -> None:
        check_server_settings(self.base_url, self.model)
        if self.image_format not in ("png", "jpeg"):
            raise PolicyError(f"image format {self.image_format!r} is not supported; choose png or jpeg")
        for name, value, low in (("timeout", self.timeout, 1e-9), ("retries", self.retries, 0), ("backoff", self.backoff, 0),
                                 ("max_backoff", self.max_backoff, 0), ("concurrency", self.concurrency, 1)):
            if value < low:
                raise PolicyError(f"openai policy: {name} must be {'positive' if low == 1e-9 else f'at least {low}'}, "
                                  f"got {value}")

    def to_dict(self) -> dict:
        """Settings for reports (the key's variable name, never the key)."""
        return {**self.__dict__, "extra_body": dict(self.extra_body)}


def check_server_settings(base_url: str, model: str) -> None:
    """`PolicyError` unless `base_url` is an http(s) URL without credentials and `model` is named."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise PolicyError(f"base URL {base_url!r} must look like http://HOST:PORT/v1")
    if "@" in url.netloc:  # urllib would not send them, and URLs end up in reports
        raise PolicyError("the base URL must not hold credentials; put the API key in the variable "
                          "named by api_key_env (--api-key-env)")
    if not model:
        raise PolicyError("an OpenAI-compatible server needs a model name (the one the server serves)")


def endpoint(base_url: str, path: str) -> str:
    """`base_url` + `/path`, keeping any query string (as the openai client joins them)."""
    parts = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + path))


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else "") if text else "(empty body)"


def _retry_after(headers) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


class _Failure(Exception):
    """One failed attempt: what happened, whether another attempt may help, the server's wait."""

    def __init__(self, what: str, retryable: bool, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(what)
        self.what, self.retryable, self.retry_after, self.status = what, retryable, retry_after, status
        self.attempts = 1  # set by the retry loop to the attempts made


# --- request: the episode's conversation as OpenAI messages ------------------------------------------
def encode_image(pixels: np.ndarray, image_format: str = "png", quality: int = 95) -> str:
    """An (H, W, 3) uint8 image as a base64 data URL."""
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if image_format == "jpeg":
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)  # lossless either way; level 1 is ~5x faster
    return f"data:image/{image_format};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _add_text(parts: list[dict], text: str) -> None:
    """Append text, merged into a preceding text part (no empty or split text parts)."""
    if not text:
        return
    if parts and parts[-1]["type"] == "text":
        parts[-1] = {"type": "text", "text": parts[-1]["text"] + text}
    else:
        parts.append({"type": "text", "text": text})


def _text_of(content) -> str:
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p.get("type") == "text")


def openai_messages(messages: list[dict], image_url: Callable[[dict], str]) -> list[dict]:
    """Project chat messages (core.trajectory.chat_messages) as OpenAI chat messages.

    `image_url(part)` turns an image part into a data URL. Runs of tool messages become one user
    message laid out as the project's template lays them out: `<tool_response>\\n`, the images, the
    text, `\\n</tool_response>`, the next response after a newline.
    """
    out: list[dict] = []
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg["content"]
        if role in ("system", "assistant"):
            out.append({"role": role, "content": _text_of(content)})
            continue
        parts: list[dict] = []
        if role == "tool":
            if i > 0 and messages[i - 1]["role"] == "tool":
                parts = out.pop()["content"]  # continue the run's user message
                _add_text(parts, "\n")
            _add_text(parts, TOOL_RESPONSE_OPEN)
        elif role != "user":
            raise ValueError(f"unexpected chat role {role!r}")
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part.get("type") == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_url(part)}})
            else:
                _add_text(parts, part.get("text", ""))
        if role == "tool":
            _add_text(parts, TOOL_RESPONSE_CLOSE)
        out.append({"role": "user", "content": parts})
    return out


# --- response: the protocol text from a chat completion ------------------------------------------------
def _call_text(name: str, arguments) -> str:
    """A `<tool_call>` block; arguments that are not a JSON object are embedded as the server sent them."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
    if isinstance(arguments, dict):
        body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    else:
        body = f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}'
    return f"<tool_call>\n{body}\n</tool_call>"


def content_text(message: dict) -> str:
    """The text of an OpenAI `message` object's content (already checked), parts joined."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content)
    return content or ""


def answer_text(message: dict) -> str:
    """The assistant's answer in the protocol's form from an OpenAI `message` object (already checked)."""
    text = content_text(message)
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip() and "<think>" not in text:
        rest = text.strip()
        text = f"<think>{reasoning.strip()}</think>" + (f"\n{rest}" if rest else "")
    calls = message.get("tool_calls") or []
    if not calls:
        return text
    fns = [(c["function"]["name"], c["function"].get("arguments", {})) for c in calls]
    if "<think>" in text:
        return text.rstrip() + "\n" + "\n".join(_call_text(n, a) for n, a in fns)
    if len(fns) == 1:
        name, args = fns[0]
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return format_answer(text.strip(), name, parsed)
    return f"<think>{text.strip()}</think>\n" + "\n".join(_call_text(n, a) for n, a in fns)


def _malformed(why: str, raw: bytes) -> _Failure:
    return _Failure(f"malformed response ({why}): {_snippet(raw)}", retryable=True)


def parse_completion(raw: bytes) -> tuple[dict, dict, str | None]:
    """(message, usage, finish_reason) of a chat completion body; `_Failure` when it is not one."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed("not JSON", raw) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed("no choices", raw)
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _malformed("choices[0].message is not an object", raw)
    content = message.get("content")
    if not (content is None or isinstance(content, str) or (
            isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content))):
        raise _malformed("message.content is neither text nor a list of text parts", raw)
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            and isinstance(c["function"].get("arguments", {}), (str, dict)) for c in calls)):
        raise _malformed("message.tool_calls is not a list of function calls", raw)
    usage = data.get("usage")
    finish = choices[0].get("finish_reason")
    return message, usage if isinstance(usage, dict) else {}, finish if isinstance(finish, str) else None


# --- the client: one server and model, shared by the policy and synthesis' teacher -------------------
PROBE_FALLBACK_STATUS = frozenset({404, 405, 501})  # GET /models not served: probe the chat endpoint instead
_UNKNOWN_MODEL_WORDS = ("model_not_found", "not found", "not exist", "unknown", "no such", "invalid model")


class ChatClient:
    """`POST {base_url}/chat/completions` for one model, over urllib: retries with backoff, the API key
    redacted from every error, usage accounting, and the `check()` preflight."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None, *, timeout: float, retries: int,
                 backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        check_server_settings(base_url, model)
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.url = endpoint(base_url, "chat/completions")
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        host = urllib.parse.urlsplit(base_url).hostname
        # a local server is never reached through an environment proxy
        self._opener = urllib.request.build_opener(
            *([urllib.request.ProxyHandler({})] if host in _LOOPBACK else []))
        self.sleep: Callable[[float], None] = time.sleep  # tests record the waits instead
        self._lock = threading.Lock()
        self.usage: dict[str, int] = {"requests": 0, "attempts": 0, "retries": 0, "failed_requests": 0,
                                      "prompt_tokens": 0, "completion_tokens": 0, "truncated": 0}
        self.latencies: list[float] = []  # seconds of each successful attempt

    @property
    def api_key_set(self) -> bool:
        return bool(self._api_key)

    def stats(self) -> dict:
        """Usage totals and latency summary, for reports."""
        with self._lock:
            lat = sorted(self.latencies)
            out: dict = dict(self.usage)
        if lat:
            out.update(latency_mean_s=sum(lat) / len(lat), latency_p50_s=lat[len(lat) // 2],
                       latency_p95_s=lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)], latency_max_s=lat[-1])
        return out

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "rsagent"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _open(self, request: urllib.request.Request) -> bytes:
        """One attempt: the response body, or `_Failure`."""
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        try:
            with self._opener.open(request, timeout=timeout) as resp:
                chunks = []
                while chunk := resp.read(1 << 16):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError
                body = b"".join(chunks)
                expected = resp.headers.get("Content-Length")
                if expected and expected.isdigit() and len(body) < int(expected):
                    raise _Failure(f"truncated body ({len(body)} of {expected} bytes): {_snippet(body)}", True)
                return body
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except (OSError, http.client.HTTPException):
                body = b""
            retryable = exc.code in RETRY_STATUS or exc.code >= 500
            raise _Failure(f"HTTP {exc.code}: {_snippet(body)}", retryable, _retry_after(exc.headers),
                           exc.code) from None
        except TimeoutError:
            raise _Failure(f"timed out after {timeout:g} s", True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Failure(f"timed out after {timeout:g} s", True) from None
            raise _Failure(f"cannot connect: {exc.reason}", True) from None
        except (http.client.HTTPException, OSError) as exc:  # reset, remote closed, incomplete read
            raise _Failure(f"connection error: {type(exc).__name__}: {exc}", True) from None

    def _wait(self, failure: _Failure, retry: int) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, self.max_backoff)
        return min(self.backoff * 2 ** (retry - 1) * (1 + 0.25 * random.random()), self.max_backoff)

    def _post(self, body: dict) -> dict:
        """The completion's message, after retries; the last `_Failure` (with `attempts`) when none came."""
        payload = json.dumps({"model": self.model, **body}, ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            t0 = time.perf_counter()
            try:
                with self._lock:
                    self.usage["attempts"] += 1
                raw = self._open(urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST"))
                message, usage, finish = parse_completion(raw)
            except _Failure as failure:
                if not failure.retryable or attempt > self.retries:
                    with self._lock:
                        self.usage["failed_requests"] += 1
                    failure.attempts = attempt
                    raise
                with self._lock:
                    self.usage["retries"] += 1
                self.sleep(self._wait(failure, attempt))
                continue
            with self._lock:
                self.latencies.append(time.perf_counter() - t0)
                self.usage["requests"] += 1
                self.usage["truncated"] += finish == "length"
                for key in ("prompt_tokens", "completion_tokens"):
                    if isinstance(usage.get(key), int):
                        self.usage[key] += usage[key]
            return message

    def chat(self, messages: list[dict], **params) -> dict:
        """One chat completion with retries (`params`: temperature, max_tokens, ...): the answer's
        `message` object; `PolicyError`, one line, on failure."""
        try:
            return self._post({"messages": messages, **params})
        except _Failure as failure:
            tries = f"{failure.attempts} attempt{'s' if failure.attempts != 1 else ''}"
            raise PolicyError(self._redact(
                f"POST {self.url} (model {self.model}) failed after {tries}: {failure.what}")) from None

    def _key_hint(self, failure: _Failure) -> str:
        if failure.status not in (401, 403):
            return ""
        if self.api_key_env and not self._api_key:
            return f"; set the API key in ${self.api_key_env}"
        return "; the server refused the API key"

    def check(self) -> None:
        """Cheap preflight: GET {base_url}/models. `PolicyError` when the server cannot be reached, refuses
        the key, or does not list the model. A server that does not serve the listing (HTTP 404, 405,
        501) gets a one-token chat request for the model instead, which must come back well formed."""
        url = endpoint(self.base_url, "models")
        headers = {k: v for k, v in self._headers().items() if k != "Content-Type"}
        try:
            raw = self._open(urllib.request.Request(url, headers=headers, method="GET"))
        except _Failure as failure:
            if failure.status in PROBE_FALLBACK_STATUS:
                return self._probe_chat(f"GET {url} answered HTTP {failure.status}")
            raise PolicyError(self._redact(f"cannot use the server at {self.base_url}: "
                                           f"GET {url}: {failure.what}{self._key_hint(failure)}")) from None
        try:
            listed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise PolicyError(self._redact(f"{url} did not answer JSON (is {self.base_url} an "
                                           f"OpenAI-compatible base URL, ending in /v1?): {_snippet(raw)}")) from None
        models = listed.get("data") if isinstance(listed, dict) else None
        if not isinstance(models, list):
            return  # not the usual listing: nothing to check against
        ids = [m.get("id") for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if ids and self.model not in ids:
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            raise PolicyError(f"the server at {self.base_url} does not serve model {self.model!r}; "
                              f"it serves: {shown}")

    def _probe_chat(self, why: str) -> None:
        """The preflight through the chat endpoint: one short user message, one token, the configured retries."""
        try:
            self._post({"messages": [{"role": "user", "content": "Reply with OK."}], "max_tokens": 1})
        except _Failure as failure:
            said = f"POST {self.url}: {failure.what}"
            if failure.status in (400, 404, 422) and self._names_unknown_model(failure.what):
                raise PolicyError(self._redact(
                    f"the server at {self.base_url} does not serve model {self.model!r} ({why}; {said})")) from None
            tries = f"{failure.attempts} attempt{'s' if failure.attempts != 1 else ''}"
            raise PolicyError(self._redact(
                f"cannot use the server at {self.base_url} with model {self.model!r}: {why}, and a one-token "
                f"chat request failed after {tries}: {said}{self._key_hint(failure)}")) from None

    def _names_unknown_model(self, said: str) -> bool:
        """Whether a chat endpoint's refusal is about the model (vLLM, OpenAI, Ollama word it differently)."""
        text = said.lower()
        return "model" in text and any(w in text for w in _UNKNOWN_MODEL_WORDS)


# --- the policy ----------------------------------------------------------------------------------------
class OpenAIPolicy(Policy):
    name = "openai"

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        try:
            self.frame = make_frame(config.frame, max_pixels=config.max_pixels, min_pixels=config.min_pixels)
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
        self.client = ChatClient(config.base_url, config.model, config.api_key_env, timeout=config.timeout,
                                 retries=config.retries, backoff=config.backoff, max_backoff=config.max_backoff)
        self.url = self.client.url
        self.usage, self.latencies = self.client.usage, self.client.latencies  # the client's own, shared
        self._images: WeakKeyDictionary[Episode, dict[ImageRef, str]] = WeakKeyDictionary()

    @property
    def identifier(self) -> str:
        c = self.config
        mode = "greedy" if c.temperature <= 0 else f"T={c.temperature:g},top_p={c.top_p:g}"
        seed = f",seed={c.seed}" if c.seed is not None else ""
        return f"openai:{c.base_url}:{c.model}:{mode}{seed}"

    @property
    def settings(self) -> dict:
        """The config (the key's variable name, never the key) and the resolved frame."""
        return {**self.config.to_dict(), "frame": self.frame.to_dict(), "api_key_set": self.client.api_key_set}

    def stats(self) -> dict:
        """Usage totals and latency summary, for reports."""
        return self.client.stats()

    def complete(self, messages: list[dict]) -> str:
        """One chat completion with retries: the answer in the protocol's form; `PolicyError` on failure."""
        c = self.config
        params: dict = {"temperature": c.temperature, "top_p": c.top_p}
        if c.max_tokens is not None:
            params["max_tokens"] = c.max_tokens
        if c.seed is not None:
            params["seed"] = c.seed
        params.update(c.extra_body)
        return answer_text(self.client.chat(messages, **params))

    # --- the policy interface ------------------------------------------------------------------------
    def request_messages(self, episode: Episode, images: dict[ImageRef, str] | None = None) -> list[dict]:
        """The episode's conversation as OpenAI messages (`images`: a data URL cache by reference)."""
        cache = {} if images is None else images

        def url(part: dict) -> str:
            ref = part["ref"]
            if ref not in cache:  # a reference always renders the same: its view and its candidates
                cache[ref] = encode_image(episode.render(ref), self.config.image_format, self.config.jpeg_quality)
            return cache[ref]

        return openai_messages(episode.messages(), url)

    def _answer(self, episode: Episode, images: dict[ImageRef, str]) -> str:
        return self.complete(self.request_messages(episode, images))

    def act(self, episodes: Sequence[Episode]) -> list[str | Exception]:
        """One answer per episode; a request that still fails after its retries fails its episode alone."""
        caches = [self._images.setdefault(ep, {}) for ep in episodes]  # in this thread: WeakKeyDictionary
        workers = min(self.config.concurrency, len(episodes))
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="rsagent-openai") as pool:
            futures = [pool.submit(self._answer, ep, cache) for ep, cache in zip(episodes, caches)]
        return [f.exception() if f.exception() is not None else f.result() for f in futures]

    def check(self) -> None:
        """The client's preflight (`ChatClient.check`)."""
        self.client.check()
