"""The `openai` policy against a real HTTP server on localhost that checks requests like an OpenAI server.

The server parses every request (model, roles, content parts, base64 images decoded with Pillow),
records it, and answers from a script: protocol-correct completions that drive real episodes with
the real GrabCut segmenter on COCO128 images, server errors, malformed bodies, slow answers.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsagent.core.errors import PolicyError, RsagentError
from rsagent.core.image import load_image
from rsagent.core.mask import mask_box
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.env.parse import parse_answer
from rsagent.policies.base import format_answer
from rsagent.policies.chat import CHAT_TEMPLATE, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN
from rsagent.policies.openai_compat import (
    OpenAIConfig,
    OpenAIPolicy,
    answer_text,
    openai_messages,
)
from rsagent.runner import run_episodes
from rsagent.segmenters import make_segmenter

MODEL = "test-vlm"
KEY_ENV = "RSAGENT_TEST_OPENAI_KEY"
SECRET = "sk-test-5ecret-never-shown"
MAX_PIXELS = 256 * 28 * 28  # small views keep GrabCut quick
SAMPLES = ("000000000009-0", "000000000034-0", "000000000081-0")  # bowl, zebra, airplane: distinct images
_DATA_URL = re.compile(r"data:image/(png|jpeg);base64,(.+)", re.DOTALL)


def completion(content: str | list | None = "", tool_calls: list | None = None, reasoning: str | None = None,
               usage: dict | None = None, finish: str = "stop") -> dict:
    message: dict = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}


def ok(text: str) -> dict:
    return {"json": completion(text)}


# --- the server ------------------------------------------------------------------------------------
class FakeServer:
    """OpenAI-compatible endpoints: POST /v1/chat/completions, GET /v1/models.

    A request for another model gets vLLM's 404. A preflight probe (one user message with text
    content) is recorded in `probes` and answered with `probe`. Each other chat request is checked (a bad one gets 400 and is listed in `invalid`) and recorded with
    its decoded images; the answer is the next `script` action, else `respond(record)`. An action is a
    dict: status (200), json or raw body, headers, delay (seconds before answering), truncate (send
    half the body under the full Content-Length).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.invalid: list[str] = []
        self.script: list[dict] = []
        self.respond: Callable[[dict], dict] | None = None
        self.models: dict = {"status": 200, "json": {"object": "list", "data": [{"id": MODEL, "object": "model"}]}}
        self.probes: list[dict] = []
        self.probe: dict = {"json": completion("OK", finish="length")}
        self.model_requests: list[dict] = []
        self.barrier: threading.Barrier | None = None  # first-turn requests meet here: proof of concurrency
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake.model_requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                self._send(fake.models if self.path == "/v1/models" else {"status": 404, "json": {"error": "no route"}})

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    return self._send({"status": 404, "json": {"error": {"message": "not found"}}})
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                record = {"start": time.monotonic(), "headers": {k.lower(): v for k, v in self.headers.items()}}
                try:
                    body = json.loads(raw)
                    if body.get("model") != MODEL:
                        return self._send({"status": 404, "json": {"error": {
                            "message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError",
                            "param": None, "code": 404}}})
                    if is_probe(body):
                        fake.probes.append(record | {"body": body})
                        return self._send(fake.probe)
                    record.update(body=body, images=check_request(body))
                except (ValueError, AssertionError, KeyError, TypeError) as exc:
                    fake.invalid.append(f"{type(exc).__name__}: {exc}")
                    return self._send({"status": 400, "json": {"error": {"message": str(exc)[:200],
                                                                          "type": "invalid_request_error"}}})
                with fake.lock:
                    fake.requests.append(record)
                    action = fake.script.pop(0) if fake.script else None
                if action is None:
                    action = fake.respond(record) if fake.respond else ok("<think>x</think>")
                record["answer"] = action
                self._send(action)
                record["end"] = time.monotonic()

            def _send(self, action: dict) -> None:
                time.sleep(action.get("delay", 0))
                data = action["raw"] if "raw" in action else json.dumps(action["json"]).encode()
                try:
                    self.send_response(action.get("status", 200))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in action.get("headers", {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if action.get("truncate") else data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def is_probe(body: dict) -> bool:
    """The preflight's chat request: one short user message for one token."""
    messages = body["messages"]
    if len(messages) != 1 or not isinstance(messages[0]["content"], str):
        return False
    assert messages[0]["role"] == "user" and messages[0]["content"] and body["max_tokens"] == 1, body
    return True


def check_request(body: dict) -> list[list[tuple[str, tuple[int, int], np.ndarray]]]:
    """Validate like an OpenAI server; the decoded images (format, (w, h), pixels) of each message."""
    assert isinstance(body, dict) and body.get("model") == MODEL, f"unknown model {body.get('model')!r}"
    assert "tools" not in body and "tool_choice" not in body, "no tools parameter expected"
    assert isinstance(body.get("temperature"), (int, float)) and isinstance(body.get("top_p"), (int, float))
    assert isinstance(body.get("max_tokens"), int)
    messages = body["messages"]
    assert isinstance(messages, list) and messages and messages[0]["role"] == "system"
    images = []
    for msg in messages:
        assert set(msg) == {"role", "content"}, f"unexpected keys {sorted(msg)}"
        assert msg["role"] in ("system", "user", "assistant"), f"role {msg['role']!r} needs tool_call_id"
        found = []
        if msg["role"] != "user":
            assert isinstance(msg["content"], str), f"{msg['role']} content must be text"
        else:
            assert isinstance(msg["content"], list) and msg["content"]
            for part in msg["content"]:
                if part["type"] == "text":
                    assert isinstance(part["text"], str) and part["text"]
                else:
                    assert part["type"] == "image_url" and set(part) == {"type", "image_url"}
                    match = _DATA_URL.fullmatch(part["image_url"]["url"])
                    assert match, "image_url must be a base64 data URL"
                    img = Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True)))
                    assert img.format == match.group(1).upper(), f"{img.format} image labelled {match.group(1)}"
                    found.append((img.format, img.size, np.asarray(img.convert("RGB"))))
        images.append(found)
    return images


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def make_policy(base_url: str, waits: list | None = None, **kwargs) -> OpenAIPolicy:
    config = {"base_url": base_url, "model": MODEL, "api_key_env": KEY_ENV, "max_pixels": MAX_PIXELS,
              "backoff": 0.01, "timeout": 10.0}
    policy = OpenAIPolicy(OpenAIConfig(**{**config, **kwargs}))
    if waits is not None:
        policy.client.sleep = waits.append  # record the backoff instead of sleeping
    return policy


# --- real tasks ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tasks(coco128_target):
    out = []
    for sid in SAMPLES:
        t = coco128_target(sid)
        out.append(EpisodeTask(load_image(t.image_path), t.query, t.sample_id, t.ground_truth(), str(t.image_path)))
    return out


@pytest.fixture(scope="module")
def segmenter():
    return make_segmenter("grabcut")


def episode(task: EpisodeTask, segmenter, policy: OpenAIPolicy, max_turns: int = 4) -> Episode:
    return Episode(task, segmenter, EpisodeConfig(max_turns=max_turns), policy.frame)


def gt_box_answer(task: EpisodeTask, segmenter, policy: OpenAIPolicy) -> str:
    """A segment call on the target's box, in the coordinates the model sees."""
    ep = episode(task, segmenter, policy)
    view = ep.views[0]
    box = ep.to_frame_box(view, view.box_from_image(mask_box(task.gt.mask)))
    return format_answer(f"{task.query} spans this box", "segment", {"box": box})


SUBMIT = format_answer("the overlay covers it", "submit", {"mask_ids": [1]})


# --- end to end ---------------------------------------------------------------------------------------------
def test_batch_of_real_episodes_runs_concurrently_to_good_masks(server, tasks, segmenter, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    policy = make_policy(server.base_url)
    first = {t.query: gt_box_answer(t, segmenter, policy) for t in tasks}
    order = [t.query for t in tasks]
    server.barrier = threading.Barrier(len(tasks), timeout=10)

    def respond(record: dict) -> dict:
        messages = record["body"]["messages"]
        query = re.search(r"Query: (.*)\n", messages[1]["content"][0]["text"]).group(1)
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn == 0:
            server.barrier.wait()  # all first-turn requests are in flight at once, or this breaks
            # answer in reverse order of the tasks: the policy must put answers back in order
            return {**ok(first[query]), "delay": 0.05 * (len(tasks) - order.index(query))}
        return ok(SUBMIT)

    server.respond = respond
    trajs = run_episodes(policy, segmenter, tasks, EpisodeConfig(max_turns=4), batch_size=len(tasks), progress=False)

    assert server.invalid == []
    assert [t.sample_id for t in trajs] == list(SAMPLES)
    for task, traj in zip(tasks, trajs):
        assert traj.final["reason"] == "submit" and traj.final["mask_ids"] == [1]
        assert traj.turns[0].assistant == first[task.query]  # its own answer, not a neighbour's
        assert traj.metrics["iou"] > 0.6, (task.sample_id, traj.metrics)
        assert traj.config["policy"] == policy.identifier
    # requests overlapped: every first-turn request started before any of them ended
    firsts = [r for r in server.requests if len(r["body"]["messages"]) == 2]
    assert len(firsts) == len(tasks)
    assert max(r["start"] for r in firsts) < min(r["end"] for r in firsts)
    assert min(firsts, key=lambda r: r["end"])["answer"]["json"]["choices"][0]["message"]["content"] \
        == first[order[-1]]  # the server finished the last task first

    # images are PNGs at exactly the frame's display size; the key went out as a bearer token
    for task, traj in zip(tasks, trajs):
        h, w = task.image.shape[:2]
        size = policy.frame.display_size(w, h)
        assert traj.views[0].size == size
        mine = [r for r in server.requests if task.query in r["body"]["messages"][1]["content"][0]["text"]]
        assert len(mine) == 2
        for r in mine:
            assert r["headers"]["authorization"] == f"Bearer {SECRET}"
            assert all(fmt == "PNG" and s == size for msg in r["images"] for fmt, s, _ in msg)

        # the second turn: system, user (text, image), the first answer verbatim, the tool response
        second = mine[1]["body"]["messages"]
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
        assert "<tools>" in second[0]["content"] and second[0]["content"] == traj.system_prompt
        assert second[1]["content"][1]["type"] == "image_url" and second[1]["content"][0]["text"] == traj.user_text
        assert second[2]["content"] == first[task.query]
        parts = second[3]["content"]
        assert [p["type"] for p in parts] == ["text", "image_url", "text"]
        assert parts[0]["text"] == TOOL_RESPONSE_OPEN
        assert parts[2]["text"] == traj.turns[0].observation.text + TOOL_RESPONSE_CLOSE
        assert parts[2]["text"].startswith("Candidate 1 on view 0")
        original, overlay = mine[1]["images"][1][0][2], mine[1]["images"][3][0][2]
        assert overlay.shape == original.shape and not np.array_equal(overlay, original)  # the candidate is drawn
        assert np.array_equal(original, mine[0]["images"][1][0][2])  # the same view 0 both turns

    stats = policy.stats()
    assert stats["requests"] == 2 * len(tasks) and stats["retries"] == 0
    assert stats["prompt_tokens"] == 100 * 2 * len(tasks) and stats["completion_tokens"] == 20 * 2 * len(tasks)
    assert len(policy.latencies) == 2 * len(tasks) and stats["latency_max_s"] >= stats["latency_p50_s"] > 0
    assert SECRET not in json.dumps([t.to_dict() for t in trajs])


def test_jpeg_images_and_norm1000_frame(server, tasks, segmenter):
    policy = make_policy(server.base_url, image_format="jpeg", frame="norm1000")
    ep = episode(tasks[0], segmenter, policy)
    server.script = [ok(SUBMIT)]
    policy.act([ep])
    h, w = tasks[0].image.shape[:2]
    assert [(fmt, s) for fmt, s, _ in server.requests[0]["images"][1]] == [("JPEG", (w, h))]
    assert "0 to 1000" in server.requests[0]["body"]["messages"][0]["content"]


# --- retries ---------------------------------------------------------------------------------------------------
def test_server_error_then_success_is_retried_with_backoff(server, tasks, segmenter):
    waits: list[float] = []
    policy = make_policy(server.base_url, waits, backoff=0.5)
    server.script = [{"status": 500, "json": {"error": {"message": "boom"}}},
                     {"status": 502, "raw": b"<html>Bad Gateway</html>"}, ok(SUBMIT)]
    assert policy.act([episode(tasks[0], segmenter, policy)]) == [SUBMIT]
    assert len(server.requests) == 3
    assert 0.5 <= waits[0] <= 0.625 and 1.0 <= waits[1] <= 1.25  # doubled, with a little jitter
    assert policy.usage["retries"] == 2 and policy.usage["requests"] == 1 and policy.usage["attempts"] == 3


def test_429_honours_retry_after(server, tasks, segmenter):
    waits: list[float] = []
    policy = make_policy(server.base_url, waits, backoff=20.0, max_backoff=5.0)
    server.script = [{"status": 429, "headers": {"Retry-After": "0"}, "json": {"error": {"message": "slow down"}}},
                     {"status": 429, "headers": {"Retry-After": "3600"}, "json": {"error": {"message": "slow down"}}},
                     {"status": 503, "json": {"error": {"message": "busy"}}}, ok(SUBMIT)]
    assert policy.act([episode(tasks[0], segmenter, policy)]) == [SUBMIT]
    assert waits == [0.0, 5.0, 5.0]  # the header's wait, capped; the backoff, capped


@pytest.mark.parametrize("bad", [
    {"raw": b'{"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assi'},  # cut short
    {"json": completion(SUBMIT), "truncate": True},  # fewer bytes than Content-Length
    {"json": {"object": "error", "message": "overloaded"}},  # 200 without choices
    {"json": {"choices": [{"message": {"content": 42}}]}},  # wrong type
    {"json": {"choices": [{"message": {"content": None, "tool_calls": [{"function": "segment"}]}}]}},
], ids=["not-json", "truncated", "no-choices", "bad-content", "bad-tool-calls"])
def test_malformed_body_then_success_is_retried(server, tasks, segmenter, bad):
    waits: list[float] = []
    policy = make_policy(server.base_url, waits)
    server.script = [bad, ok(SUBMIT)]
    assert policy.act([episode(tasks[0], segmenter, policy)]) == [SUBMIT]
    assert len(server.requests) == 2 and len(waits) == 1


def raise_failures(answers: list) -> list:
    """The policy returns a failed request's exception in its episode's place: raise it here."""
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


def test_persistent_malformed_body_fails_with_the_body(server, tasks, segmenter):
    policy = make_policy(server.base_url, [], retries=2)
    server.respond = lambda record: {"json": {"object": "list", "data": []}}
    with pytest.raises(PolicyError, match=r"failed after 3 attempts: malformed response \(no choices\): "
                                          r'\{"object": "list", "data": \[\]\}'):
        raise_failures(policy.act([episode(tasks[0], segmenter, policy)]))


def test_persistent_503_fails_the_episode_with_the_error_in_the_trajectory(server, tasks, segmenter, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    policy = make_policy(server.base_url, [], retries=2)
    # a careless server that echoes the credentials: they still never reach the error or the record
    server.respond = lambda record: {"status": 503, "json": {"error": {
        "message": f"overloaded; your header was {record['headers']['authorization']}"}}}
    [traj] = run_episodes(policy, segmenter, tasks[:1], EpisodeConfig(max_turns=4), progress=False)
    assert len(server.requests) == 3
    assert traj.final["reason"] == "failed" and traj.metrics["iou"] == 0.0
    error = traj.final["error"]
    assert error.startswith("PolicyError: POST http://127.0.0.1:") and "\n" not in error
    assert f"(model {MODEL}) failed after 3 attempts: HTTP 503:" in error and "overloaded" in error
    assert "Bearer ***" in error
    dumped = json.dumps(traj.to_dict())
    assert SECRET not in dumped and SECRET not in policy.identifier
    assert policy.usage["failed_requests"] == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(server, tasks, segmenter, monkeypatch, status):
    monkeypatch.setenv(KEY_ENV, SECRET)
    waits: list[float] = []
    policy = make_policy(server.base_url, waits)
    server.respond = lambda record: {"status": status, "json": {"error": {
        "message": f"Incorrect API key provided: {record['headers']['authorization'][7:]}", "code": "invalid_api_key"}}}
    with pytest.raises(PolicyError) as info:
        raise_failures(policy.act([episode(tasks[0], segmenter, policy)]))
    assert len(server.requests) == 1 and waits == []
    message = str(info.value)
    assert f"failed after 1 attempt: HTTP {status}: " in message and "Incorrect API key provided: ***" in message
    assert SECRET not in message


def test_slow_response_times_out_and_is_retried(server, tasks, segmenter):
    policy = make_policy(server.base_url, retries=1, timeout=0.3)
    server.respond = lambda record: {**ok(SUBMIT), "delay": 1.5}
    with pytest.raises(PolicyError, match=r"failed after 2 attempts: timed out after 0\.3 s"):
        raise_failures(policy.act([episode(tasks[0], segmenter, policy)]))
    assert len(server.requests) == 2


def test_unreachable_server_fails_the_episodes(tasks, segmenter):
    policy = make_policy(closed_port_url(), retries=1)
    trajs = run_episodes(policy, segmenter, tasks[:2], EpisodeConfig(max_turns=4), progress=False)
    assert [t.final["reason"] for t in trajs] == ["failed", "failed"]
    assert all("failed after 2 attempts: cannot connect:" in t.final["error"] for t in trajs)


def test_one_failed_request_fails_only_its_episode(server, tasks, segmenter):
    policy = make_policy(server.base_url, retries=0)
    first = {t.query: gt_box_answer(t, segmenter, policy) for t in tasks}

    def respond(record: dict) -> dict:
        messages = record["body"]["messages"]
        query = re.search(r"Query: (.*)\n", messages[1]["content"][0]["text"]).group(1)
        if query == tasks[1].query:
            return {"status": 400, "json": {"error": {"message": "image too large"}}}
        return ok(SUBMIT if any(m["role"] == "assistant" for m in messages) else first[query])

    server.respond = respond
    trajs = run_episodes(policy, segmenter, tasks, EpisodeConfig(max_turns=4), progress=False)
    assert [t.final["reason"] for t in trajs] == ["submit", "failed", "submit"]
    assert "PolicyError" in trajs[1].final["error"] and "image too large" in trajs[1].final["error"]
    assert len(trajs[1].turns) == 0 and all(t.metrics["iou"] > 0.5 for t in (trajs[0], trajs[2]))


def test_requests_render_like_the_project_template(tasks, segmenter):
    """Through the chat template, what is sent reads exactly like the episode's own conversation:
    tool observations as `<tool_response>` user turns, images where the template puts them."""
    render = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template

    policy = make_policy("http://127.0.0.1:1/v1")
    ep = episode(tasks[0], segmenter, policy)
    ep.step(gt_box_answer(tasks[0], segmenter, policy))
    ep.step("no tags at all")  # an error observation: a tool message without images
    native = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p for p in m["content"]]}
              for m in ep.messages()]
    native.insert(4, {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "a second response"}]})
    sent = openai_messages(native, lambda part: "data:image/png;base64,AAAA")
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]

    def text(messages: list[dict]) -> str:
        return render([messages], chat_template=CHAT_TEMPLATE, add_generation_prompt=True)[0][0]

    assert text(sent) == text(native)
    assert "</tool_response>\n<tool_response>\n<|vision_start|>" in text(sent)  # a run of tool messages: one user turn


# --- answers --------------------------------------------------------------------------------------------------
BOX = [10, 20, 200, 220]
CALL = {"name": "segment", "arguments": {"box": BOX}}


def tool_call(arguments) -> list[dict]:
    return [{"id": "call_1", "type": "function", "function": {"name": "segment", "arguments": arguments}}]


@pytest.mark.parametrize("message,expected", [
    # vLLM's hermes parser: the thinking stays in content, the call moves to tool_calls (arguments a string)
    (completion("<think>the bowl</think>\n\n", tool_call(json.dumps({"box": BOX}))),
     format_answer("the bowl", "segment", {"box": BOX})),
    # reasoning parser + tool parser: content empty, thinking in reasoning_content, arguments an object
    (completion(None, tool_call({"box": BOX}), reasoning="the bowl"), format_answer("the bowl", "segment", {"box": BOX})),
    # no think tags at all: the content becomes the thinking
    (completion("I see the bowl.", tool_call(json.dumps({"box": BOX}))), format_answer("I see the bowl.", "segment", {"box": BOX})),
    # reasoning_content with the call in the text
    (completion("\n\n<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>", reasoning="the bowl"),
     format_answer("the bowl", "segment", {"box": BOX})),
    # content as a list of text parts
    (completion([{"type": "text", "text": "<think>the bowl</think>\n"},
                 {"type": "text", "text": "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>"}]),
     format_answer("the bowl", "segment", {"box": BOX})),
])
def test_answers_are_rebuilt_into_the_protocol(server, tasks, segmenter, message, expected):
    policy = make_policy(server.base_url)
    server.script = [{"json": message}]
    [answer] = policy.act([episode(tasks[0], segmenter, policy)])
    assert answer == expected
    parsed = parse_answer(answer)
    assert parsed.format_ok and parsed.call == CALL


def test_unparsable_tool_arguments_are_kept_for_the_episode_to_reject(tasks, segmenter):
    answer = answer_text(completion("", tool_call('{"box": [10, 20'))["choices"][0]["message"])
    assert answer == '<think></think>\n<tool_call>\n{"name": "segment", "arguments": {"box": [10, 20}\n</tool_call>'
    assert parse_answer(answer).call is None
    # newer vLLM names the reasoning field `reasoning`
    message = {"role": "assistant", "content": None, "reasoning": "the bowl", "tool_calls": tool_call({"box": BOX})}
    assert answer_text(message) == format_answer("the bowl", "segment", {"box": BOX})


def test_empty_answer_is_a_protocol_error_not_an_exception(server, tasks, segmenter):
    policy = make_policy(server.base_url)
    ep = episode(tasks[0], segmenter, policy)
    server.script = [{"json": completion(None, finish="length")}]
    [answer] = policy.act([ep])
    assert answer == "" and policy.usage["truncated"] == 1
    obs = ep.step(answer)
    assert obs.text.startswith("Error: no <tool_call>") and not ep.done


# --- keys, identifiers, preflight ------------------------------------------------------------------------------
def test_no_authorization_header_without_the_key(server, tasks, segmenter, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    policy = make_policy(server.base_url)
    server.script = [ok(SUBMIT)]
    policy.act([episode(tasks[0], segmenter, policy)])
    assert "authorization" not in server.requests[0]["headers"]


def test_request_settings_and_identifier(server, tasks, segmenter, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    policy = make_policy(server.base_url + "/", temperature=0.7, top_p=0.9,
                         max_tokens=64, seed=5, extra_body={"top_k": 20, "repetition_penalty": 1.05})
    server.script = [ok(SUBMIT)]
    policy.act([episode(tasks[0], segmenter, policy)])
    body = server.requests[0]["body"]
    assert {k: body[k] for k in ("temperature", "top_p", "max_tokens", "seed", "top_k", "repetition_penalty")} == \
        {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 5, "top_k": 20, "repetition_penalty": 1.05}
    assert policy.identifier == f"openai:{server.base_url}/:{MODEL}:T=0.7,top_p=0.9,seed=5"
    settings = json.dumps(policy.settings)
    assert SECRET not in settings and SECRET not in policy.identifier
    assert policy.settings["api_key_env"] == KEY_ENV and policy.settings["api_key_set"] is True
    assert policy.settings["frame"] == {"name": "qwen2.5-vl", "min_pixels": 56 * 56, "max_pixels": MAX_PIXELS, "factor": 28}


def test_check_accepts_a_served_model(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    make_policy(server.base_url).check()
    assert server.model_requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"


def test_check_rejects_a_model_the_server_does_not_serve(server):
    server.models = {"json": {"object": "list", "data": [{"id": "other-a"}, {"id": "other-b"}]}}
    with pytest.raises(PolicyError, match=f"does not serve model '{MODEL}'; it serves: other-a, other-b"):
        make_policy(server.base_url).check()


@pytest.mark.parametrize("status", [404, 405, 501])
def test_check_without_a_model_listing_probes_the_chat_endpoint(server, monkeypatch, status):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.models = {"status": status, "json": {"error": "no such route"}}
    make_policy(server.base_url).check()
    [probe] = server.probes
    assert probe["body"] == {"model": MODEL, "messages": [{"role": "user", "content": "Reply with OK."}], "max_tokens": 1}
    assert probe["headers"]["authorization"] == f"Bearer {SECRET}" and server.requests == []


def test_check_without_a_model_listing_reports_an_unknown_model(server):
    server.models = {"status": 405, "json": {"error": "method not allowed"}}
    with pytest.raises(PolicyError) as info:
        make_policy(server.base_url, model="not-served").check()
    message = str(info.value)
    assert message.startswith(f"the server at {server.base_url} does not serve model 'not-served' (GET ")
    assert "HTTP 405" in message and "The model `not-served` does not exist." in message and "\n" not in message


@pytest.mark.parametrize("probe,expect", [
    ({"status": 404, "json": {"detail": "Not Found"}}, r"failed after 1 attempt: POST .*: HTTP 404: .*Not Found"),
    ({"raw": b"<html>hello</html>"}, r"failed after 3 attempts: POST .*: malformed response \(not JSON\)"),
    ({"status": 401, "json": {"error": "no key"}}, f"failed after 1 attempt: POST .*: HTTP 401: .*no key.*; set the API key in \\${KEY_ENV}$"),
], ids=["no-chat-endpoint", "malformed", "refused-key"])
def test_check_without_a_model_listing_fails_when_the_probe_fails(server, monkeypatch, probe, expect):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.models = {"status": 501, "json": {"error": "not implemented"}}
    server.probe = probe
    waits: list[float] = []
    with pytest.raises(PolicyError, match=f"^cannot use the server at {server.base_url} with model '{MODEL}': "
                                          f"GET .*/models answered HTTP 501, and a one-token chat request {expect}"):
        make_policy(server.base_url, waits, retries=2).check()
    assert len(server.probes) == 1 + len(waits)  # retried as configured, only when it may help


def test_check_explains_refused_keys_and_unreachable_servers(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.models = {"status": 401, "json": {"error": {"message": "missing key"}}}
    with pytest.raises(PolicyError, match=f"HTTP 401: .*missing key.*; set the API key in \\${KEY_ENV}"):
        make_policy(server.base_url).check()
    with pytest.raises(PolicyError, match="cannot use the server at .*: cannot connect"):
        make_policy(closed_port_url()).check()
    server.models = {"raw": b"<html>welcome</html>"}
    with pytest.raises(PolicyError, match="did not answer JSON"):
        make_policy(server.base_url).check()


@pytest.mark.parametrize("bad", [{"image_format": "gif"}, {"base_url": "localhost:8000/v1"},
                                 {"base_url": "http://user:pw@127.0.0.1:1/v1"}, {"frame": "nope"},
                                 {"retries": -1}, {"concurrency": 0}, {"model": ""}])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(RsagentError):
        make_policy(**{"base_url": "http://127.0.0.1:1/v1", **bad})


# --- the command line ------------------------------------------------------------------------------------
def run_cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsagent.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_cli_segments_through_a_server(server, tasks, segmenter, tmp_path):
    task = tasks[0]
    policy = make_policy(server.base_url)
    box_answer = gt_box_answer(task, segmenter, policy)
    server.respond = lambda record: ok(
        SUBMIT if any(m["role"] == "assistant" for m in record["body"]["messages"]) else box_answer)
    res = run_cli("segment", task.image_path, task.query, "--policy", "openai", "--base-url", server.base_url,
                  "--model", MODEL, "--api-key-env", KEY_ENV, "--max-pixels", MAX_PIXELS, "--out", tmp_path / "out",
                  cwd=tmp_path, env={KEY_ENV: SECRET})
    assert res.returncode == 0, res.stderr
    assert "turns=2 end=submit" in res.stdout
    traj = Trajectory.load(tmp_path / "out" / "trajectory.json")
    assert traj.turns[0].assistant == box_answer and traj.config["policy"].startswith(f"openai:{server.base_url}")
    assert server.model_requests and server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in (tmp_path / "out" / "trajectory.json").read_text()


@pytest.mark.parametrize("status", [404, 405, 501])
def test_cli_segments_through_a_server_without_a_model_listing(server, tasks, segmenter, tmp_path, capsys, status):
    from rsagent.cli import main

    task = tasks[0]
    server.models = {"status": status, "json": {"error": "no such route"}}
    box_answer = gt_box_answer(task, segmenter, make_policy(server.base_url))
    server.respond = lambda record: ok(
        SUBMIT if any(m["role"] == "assistant" for m in record["body"]["messages"]) else box_answer)
    code = main(["segment", str(task.image_path), task.query, "--policy", "openai", "--base-url", server.base_url,
                 "--model", MODEL, "--segmenter", "grabcut", "--max-pixels", str(MAX_PIXELS),
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "turns=2 end=submit" in out.out and len(server.probes) == 1 and len(server.requests) == 2
    traj = Trajectory.load(tmp_path / "out" / "trajectory.json")
    assert traj.turns[0].assistant == box_answer and traj.final["mask_ids"] == [1]

    code = main(["segment", str(task.image_path), task.query, "--policy", "openai", "--base-url", server.base_url,
                 "--model", "not-served", "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not serve model 'not-served'" in err[0], err
    assert len(server.requests) == 2  # nothing ran


def test_cli_unreachable_server_or_unknown_model_is_one_line(server, tasks, tmp_path):
    image = tasks[0].image_path
    for base_url, model, expect in ((closed_port_url(), MODEL, "cannot connect"),
                                    (server.base_url, "not-served", "does not serve model 'not-served'")):
        res = run_cli("segment", image, "x", "--policy", "openai", "--base-url", base_url, "--model", model,
                      "--retries", "0", cwd=tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and expect in lines[0], res.stderr
    res = run_cli("segment", image, "x", "--policy", "openai", cwd=tmp_path)
    assert res.returncode == 2 and "needs --base-url URL" in res.stderr
