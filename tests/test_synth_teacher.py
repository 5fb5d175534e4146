"""The synthesis teacher against a real HTTP server on localhost that plays a simple deterministic teacher.

The server reads the numbered instance list out of each prompt. Asked to write queries it proposes
"the <category>" for every listed instance and "every <category>" for repeated ones (plus scripted
extras); asked blind, it answers with every listed instance whose category the query names; asked for
reasoning, it answers `reasoning`. Every request is checked (model, roles, a PNG data URL) and recorded.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsagent.core.errors import PolicyError, RsagentError
from rsagent.data.instances import Instance, InstanceImage
from rsagent.synth.queries import GeneratedQuery
from rsagent.synth.teacher import REJECT_REASONS, Teacher, TeacherConfig, instance_list

MODEL = "teacher-vlm"
KEY_ENV = "RSAGENT_TEST_TEACHER_KEY"
SECRET = "sk-teacher-5ecret"
_ITEM = re.compile(r"^(\d+): (.+?), box \[[\d, ]+\]( \(crowd.*\))?$", re.MULTILINE)


def completion(content: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}}


class FakeTeacher:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.invalid: list[str] = []
        self.models: dict = {"status": 200, "json": {"object": "list", "data": [{"id": MODEL}]}}
        self.writer: str | None = None  # the writer's raw answer; None: proposals from the list
        self.extra: list = []  # proposals added to the generated ones
        self.blind: str | None = None  # the blind answer's raw text; None: resolved from the query
        self.fail_blind_on = ""  # a blind request whose query contains this gets HTTP 400
        self.reasoning = "I see the dog near the left edge, so I outline it with a box."
        self.status = 200  # anything else: every chat request fails with it
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._send(fake.models if self.path == "/v1/models" else {"status": 404, "json": {"error": "no route"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("model") != MODEL:
                    return self._send({"status": 404, "json": {"error": {
                        "message": f"The model `{body.get('model')}` does not exist.", "code": 404}}})
                if len(body["messages"]) == 1:  # the preflight's probe
                    return self._send({"json": completion("OK")})
                try:
                    record = {"body": body, "auth": self.headers.get("Authorization"), **fake.check(body)}
                except (AssertionError, KeyError, ValueError) as exc:
                    fake.invalid.append(f"{type(exc).__name__}: {exc}")
                    return self._send({"status": 400, "json": {"error": str(exc)}})
                fake.requests.append(record)
                if fake.status != 200:
                    return self._send({"status": fake.status, "json": {"error": {"message": "teacher is down"}}})
                self._send(fake.answer(record))

            def _send(self, action: dict) -> None:
                data = json.dumps(action["json"]).encode()
                self.send_response(action.get("status", 200))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    @staticmethod
    def check(body: dict) -> dict:
        """Validate like an OpenAI server: the request's prompt text and its decoded image."""
        assert isinstance(body["temperature"], (int, float)) and isinstance(body["max_tokens"], int)
        system, user = body["messages"]
        assert system["role"] == "system" and isinstance(system["content"], str)
        image_part, text_part = user["content"]
        assert user["role"] == "user" and image_part["type"] == "image_url" and text_part["type"] == "text"
        header, data = image_part["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        assert image.format == "PNG"
        return {"text": text_part["text"], "image": np.asarray(image.convert("RGB"))}

    def answer(self, record: dict) -> dict:
        text = record["text"]
        listing = [(int(i), cat, bool(crowd)) for i, cat, crowd in _ITEM.findall(text)]
        if "Write up to" in text:
            record["kind"] = "writer"
            return {"json": completion(self.writer if self.writer is not None else json.dumps(self.propose(listing)))}
        if "Which of the listed objects" in text:
            record["kind"] = "blind"
            query = re.search(r"^Query: (.*)$", text, re.MULTILINE).group(1)
            if self.fail_blind_on and self.fail_blind_on in query:
                return {"status": 400, "json": {"error": {"message": "content filtered"}}}
            named = [i for i, cat, _ in listing if re.search(rf"\b{re.escape(cat)}\b", query)]
            return {"json": completion(self.blind if self.blind is not None else json.dumps(named))}
        record["kind"] = "rewrite"
        return {"json": completion(self.reasoning)}

    def propose(self, listing: list[tuple[int, str, bool]]) -> list:
        out: list = [{"query": f"the {cat}", "targets": [i]} for i, cat, _ in listing]
        by_cat: dict[str, list[int]] = {}
        for i, cat, crowd in listing:
            if not crowd:
                by_cat.setdefault(cat, []).append(i)
        out += [{"query": f"every {cat}", "targets": idx} for cat, idx in by_cat.items() if len(idx) > 1]
        return out + self.extra

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.requests if r.get("kind") == kind]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeTeacher()
    yield fake
    fake.close()


def make_teacher(base_url: str, waits: list | None = None, **kwargs) -> Teacher:
    teacher = Teacher(TeacherConfig(**{"base_url": base_url, "model": MODEL, "api_key_env": KEY_ENV,
                                       "timeout": 10.0, "retries": 1, **kwargs}))
    teacher.client.sleep = (waits if waits is not None else []).append  # record the backoff instead of sleeping
    return teacher


# a dog, two cats, a crowd of people, a bicycle
IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
INSTANCES = InstanceImage("img-1", Path("img-1.png"), 64, 48, (
    Instance(0, "dog", (2.0, 3.4, 20.6, 30.0), 300.0),
    Instance(1, "cat", (30.0, 5.0, 40.0, 15.0), 80.0),
    Instance(2, "cat", (45.0, 5.0, 60.0, 15.0), 90.0),
    Instance(3, "person", (0.0, 30.0, 64.0, 48.0), 600.0, crowd=True),
    Instance(4, "bicycle", (22.0, 20.0, 44.0, 40.0), 200.0),
))


def rejected(**counts: int) -> dict[str, int]:
    return {reason: counts.get(reason, 0) for reason in REJECT_REASONS}


def teacher_query(text: str, *targets: int) -> GeneratedQuery:
    return GeneratedQuery(text, "teacher", targets, {"type": "teacher", "verified_by": "blind resolution"})


# --- queries ------------------------------------------------------------------------------------------------
def test_queries_are_kept_only_when_a_blind_request_names_exactly_their_targets(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.extra = [{"query": "the unicorn", "targets": [7]}, {"query": 3, "targets": [0]},
                    {"query": "the dog and its friend", "targets": ["0"]}, {"query": "  the   DOG ", "targets": [0]}]
    found = make_teacher(server.base_url).write_queries(IMAGE, INSTANCES, 20)

    assert server.invalid == []
    assert found.queries == [teacher_query("the dog", 0), teacher_query("the bicycle", 4),
                             teacher_query("every cat", 1, 2)]
    # "the cat" (1) is read blind as both cats, its twin (2) is a repeat, the person is a crowd
    assert found.rejected == rejected(blind_disagrees=1, duplicate=2, crowd_target=1, unknown_index=1, malformed=2)

    [writer] = server.of("writer")
    blind = server.of("blind")
    assert len(blind) == 4  # only queries that passed the checks without a request were asked about
    listing = instance_list(INSTANCES)
    assert writer["text"].startswith(listing) and "Write up to 20 " in writer["text"]
    assert "3: person, box [0, 30, 64, 48] (crowd" in listing and "0: dog, box [2, 3, 21, 30]" in listing
    for r in blind:  # the image, the list and the query alone: never the claimed answer
        assert r["text"].startswith(listing) and "targets" not in r["text"] and "Write up to" not in r["text"]
    assert all(np.array_equal(r["image"], IMAGE) for r in server.requests)  # lossless, the image's own size
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)


def test_queries_beyond_n_are_not_asked_about(server):
    found = make_teacher(server.base_url).write_queries(IMAGE, INSTANCES, 1)
    assert found.queries == [teacher_query("the dog", 0)] and found.rejected == rejected()
    assert len(server.of("blind")) == 1
    assert make_teacher(server.base_url).write_queries(IMAGE, INSTANCES, 0).queries == []
    assert len(server.requests) == 2  # n = 0 asks nothing


def test_answers_wrapped_in_prose_or_fences_are_read(server):
    server.writer = ('Here are the queries:\n```json\n[{"query": "something to ride on", "targets": [4]}]\n```\n'
                     "I hope these help.")
    server.blind = "The query means the bicycle, so: [4]"
    found = make_teacher(server.base_url).write_queries(IMAGE, INSTANCES, 3)
    assert found.queries == [teacher_query("something to ride on", 4)]


@pytest.mark.parametrize("writer", ["Sure! A dog, two cats and a bicycle.", '[{"query": "the dog", "targets": [0]',
                                    '{"query": "the dog", "targets": [0]}', ""])
def test_a_malformed_writer_answer_is_counted_not_raised(server, writer):
    server.writer = writer
    found = make_teacher(server.base_url).write_queries(IMAGE, INSTANCES, 3)
    assert found.queries == [] and found.rejected == rejected(malformed=1) and server.of("blind") == []


@pytest.mark.parametrize("blind", ["the dog", "[0.0]", "[true]", '["0"]'])
def test_a_malformed_blind_answer_rejects_the_query(server, blind):
    server.extra, server.blind = [], blind
    found = make_teacher(server.base_url).write_queries(IMAGE, INSTANCES, 1)
    assert found.queries == [] and found.rejected == rejected(malformed=1)


def test_a_failed_blind_request_rejects_only_its_query(server):
    server.fail_blind_on = "bicycle"
    waits: list[float] = []
    found = make_teacher(server.base_url, waits).write_queries(IMAGE, INSTANCES, 20)
    assert found.queries == [teacher_query("the dog", 0), teacher_query("every cat", 1, 2)]
    assert found.rejected == rejected(request_failed=1, blind_disagrees=1, duplicate=1, crowd_target=1)
    assert waits == []  # a 400 is not retried


def test_a_failing_server_gives_no_queries_and_no_rewrite(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.status = 503
    waits: list[float] = []
    teacher = make_teacher(server.base_url, waits, retries=2)
    found = teacher.write_queries(IMAGE, INSTANCES, 5)
    assert found.queries == [] and found.rejected == rejected(request_failed=1)
    assert len(server.requests) == 3 and len(waits) == 2  # the configured retries, with backoff
    assert teacher.rewrite_reasoning(IMAGE, "the dog", None, {"name": "submit", "arguments": {"mask_ids": []}}) is None
    assert teacher.client.usage["failed_requests"] == 2


def test_an_unreachable_server_gives_no_queries():
    teacher = make_teacher("http://127.0.0.1:9/v1", retries=0)
    assert teacher.write_queries(IMAGE, INSTANCES, 5).rejected == rejected(request_failed=1)
    with pytest.raises(PolicyError, match="cannot use the server at .*cannot connect"):
        teacher.check()


# --- preflight ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 405, 501])
def test_a_server_without_models_works(server, status):
    server.models = {"status": status, "json": {"error": "no such route"}}
    teacher = make_teacher(server.base_url)
    teacher.check()  # through a one-token chat request
    assert teacher.write_queries(IMAGE, INSTANCES, 1).queries == [teacher_query("the dog", 0)]


def test_check_reports_an_unknown_model(server):
    with pytest.raises(PolicyError, match=f"does not serve model 'other'; it serves: {MODEL}"):
        make_teacher(server.base_url, model="other").check()
    server.models = {"status": 404, "json": {"error": "no such route"}}
    with pytest.raises(PolicyError, match="does not serve model 'other' .*The model `other` does not exist"):
        make_teacher(server.base_url, model="other").check()


@pytest.mark.parametrize("bad", [{"base_url": "localhost:8000/v1"}, {"model": ""}, {"timeout": 0},
                                 {"retries": -1}, {"max_tokens": 0}])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(RsagentError):
        TeacherConfig(**{"base_url": "http://127.0.0.1:1/v1", "model": MODEL, **bad})


# --- reasoning ------------------------------------------------------------------------------------------------
OBSERVATION = "Candidate 1 on view 0: box [2, 3, 21, 30], area 12% of the view."
REFINE = {"name": "refine", "arguments": {"mask_id": 1, "points": [[15, 22]], "labels": [0]}}


def test_rewrite_sees_the_picture_the_observation_and_the_call(server):
    overlay = IMAGE[::-1].copy()
    server.reasoning = "  Candidate 1 spills onto the grass\nbelow the dog, so I add a negative click at 15, 22. "
    text = make_teacher(server.base_url, seed=4).rewrite_reasoning(overlay, "the dog", OBSERVATION, REFINE)
    assert text == "Candidate 1 spills onto the grass below the dog, so I add a negative click at 15, 22."
    [r] = server.of("rewrite")
    assert np.array_equal(r["image"], overlay) and r["body"]["seed"] == 4 and r["body"]["temperature"] == 0.0
    assert "Query: the dog\n" in r["text"] and OBSERVATION in r["text"] and json.dumps(REFINE) in r["text"]


def test_rewrite_of_the_first_turn_says_no_tool_has_run(server):
    call = {"name": "segment", "arguments": {"box": [2, 3, 21, 30]}}
    assert make_teacher(server.base_url).rewrite_reasoning(IMAGE, "the dog", None, call) == server.reasoning
    assert "No tool has run yet" in server.of("rewrite")[0]["text"]


@pytest.mark.parametrize("reasoning", [
    "", "ok", "word " * 150,  # empty, too short, too long
    "<think>The dog is on the left.</think>",
    'I will refine it. <tool_call>{"name": "refine"}</tool_call>',
    "Candidate 1 covers only 62% of the dog, so I click on its tail.",  # a number the policy never read
])
def test_an_unusable_rewrite_is_none(server, reasoning):
    server.reasoning = reasoning
    assert make_teacher(server.base_url).rewrite_reasoning(IMAGE, "the dog", OBSERVATION, REFINE) is None


# --- in a synthesis run -------------------------------------------------------------------------------------
def test_synth_with_a_teacher_adds_verified_queries_and_rewrites_reasoning(server, coco128_root, tmp_path,
                                                                          monkeypatch):
    from rsagent.cli import main
    from rsagent.env.parse import parse_answer

    monkeypatch.setenv(KEY_ENV, SECRET)
    server.models = {"status": 404, "json": {"error": "no route"}}  # a server without GET /v1/models
    out = tmp_path / "synth"
    args = ["synth", "--dataset", "yoloseg", "--root", str(coco128_root), "--out", str(out), "--num", "12",
            "--seed", "2", "--no-progress", "--max-pixels", "100000", "--teacher-base-url", server.base_url,
            "--teacher-model", MODEL, "--teacher-api-key-env", KEY_ENV, "--teacher-queries", "2", "--rewrite"]
    assert main(args) == 0
    assert not server.invalid
    cached = [json.loads(x) for x in (out / "teacher_queries.jsonl").read_text().splitlines()]
    assert cached and all(len(r["queries"]) <= 2 for r in cached)
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    taught = [r for r in records if r["kind"] == "teacher"]
    assert taught and all(r["spec"]["type"] == "teacher" for r in taught)
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert sft
    for row in sft:
        answers = ["".join(p["text"] for p in m["content"]) for m in row["messages"] if m["role"] == "assistant"]
        thinks = [parse_answer(a).think for a in answers]
        assert all(parse_answer(a).format_ok for a in answers)
        assert thinks.count(server.reasoning) >= 1  # the teacher's words, the expert's calls
    rewrites = server.of("rewrite")
    assert rewrites and all(r["auth"] == f"Bearer {SECRET}" for r in rewrites)
    # resumed, the cached teacher queries are not asked again
    asked = len(server.of("writer"))
    assert main(args + ["--resume"]) == 0 and len(server.of("writer")) == asked
