"""Fuzzing `Episode.step` with malformed answers and tool calls, on a real image with real GrabCut.

The protocol (DESIGN.md, "One episode"): a malformed answer is never an exception; the environment
answers with an error message, the turn counts, and the episode goes on. Every rejected answer must
leave the episode's candidates and views untouched, and valid calls after it must still work.
"""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

from rsagent.core.image import load_image
from rsagent.core.trajectory import Trajectory
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.env.parse import MAX_ANSWER_CHARS, MAX_CALL_CHARS
from rsagent.env.tools import MAX_POINTS, TOOLS
from rsagent.policies.base import format_answer
from rsagent.segmenters import make_segmenter

NAN, INF = float("nan"), float("inf")
BIG_TURNS = 100_000


# --- building answers --------------------------------------------------------------------------
def wrap(body: str, think: str = "checking") -> str:
    return f"<think>{think}</think>\n<tool_call>\n{body}\n</tool_call>"


def call(name, arguments, think: str = "checking") -> str:
    """A tool call serialised with Python's json (which writes NaN / Infinity / -Infinity literals)."""
    return wrap(json.dumps({"name": name, "arguments": arguments}), think)


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


VALID_SEGMENT = call("segment", {"box": [100, 100, 300, 300]})


def _hand_cases() -> list[tuple[str, object]]:
    """Nasty answers written by hand. The shared episode has candidate 1 and only view 0."""
    seg_box = '{"name": "segment", "arguments": {"box": [0, 0, 10, 10]}}'
    cases: list[tuple[str, object]] = [
        # --- no readable call ---
        ("empty", ""),
        ("whitespace", "   \n\t "),
        ("plain text", "I think the answer is the dog."),
        ("think only", "<think>the dog is on the left</think>"),
        ("open tag only", "<tool_call>"),
        ("unclosed call", "<think>x</think><tool_call>" + seg_box),
        ("truncated close tag", "<think>x</think><tool_call>" + seg_box + "</tool_"),
        ("close tag missing >", "<think>x</think><tool_call>" + seg_box + "</tool_call"),
        ("open tag missing <", "<think>x</think>tool_call>" + seg_box + "</tool_call>"),
        ("close before open", "</tool_call>" + seg_box + "<tool_call>"),
        ("misspelt tag", "<think>x</think><toolcall>" + seg_box + "</toolcall>"),
        ("upper-case tag", "<think>x</think><TOOL_CALL>" + seg_box + "</TOOL_CALL>"),
        ("fullwidth brackets", "<think>x</think>＜tool_call＞" + seg_box + "＜/tool_call＞"),
        ("empty call", wrap("")),
        ("blank call", wrap("   \n ")),
        ("two valid calls", VALID_SEGMENT + "\n" + VALID_SEGMENT),
        ("two calls one bad", VALID_SEGMENT + "<tool_call>{oops}</tool_call>"),
        ("nested call tags", wrap("<tool_call>" + seg_box + "</tool_call>")),
        # --- not JSON ---
        ("unquoted keys", wrap('{name: "segment", arguments: {box: [0, 0, 10, 10]}}')),
        ("single quotes", wrap("{'name': 'segment', 'arguments': {'box': [0, 0, 10, 10]}}")),
        ("trailing comma", wrap('{"name": "segment", "arguments": {"box": [0, 0, 10, 10],}}')),
        ("missing brace", wrap('{"name": "segment", "arguments": {"box": [0, 0, 10, 10]}')),
        ("missing comma", wrap('{"name": "segment" "arguments": {"box": [0, 0, 10, 10]}}')),
        ("json then junk", wrap(seg_box + " and more")),
        ("two json objects", wrap(seg_box + seg_box)),
        ("python literals", wrap('{"name": "segment", "arguments": {"box": [0, 0, 10, 10], "view": None}}')),
        ("hex number", wrap('{"name": "segment", "arguments": {"box": [0, 0, 0x10, 10]}}')),
        ("leading plus", wrap('{"name": "segment", "arguments": {"box": [0, 0, +10, 10]}}')),
        ("comment", wrap('{"name": "segment", /* box */ "arguments": {"box": [0, 0, 10, 10]}}')),
        ("unterminated fence", wrap("```json\n" + seg_box)),
        ("bad escape", wrap('{"name": "seg\\ment", "arguments": {}}')),
        # --- JSON but not a call ---
        ("json list", wrap("[]")),
        ("json string", wrap('"segment"')),
        ("json number", wrap("42")),
        ("json null", wrap("null")),
        ("json true", wrap("true")),
        ("no name", wrap('{"arguments": {"box": [0, 0, 10, 10]}}')),
        ("name number", call(42, {"box": [0, 0, 10, 10]})),
        ("name null", call(None, {"box": [0, 0, 10, 10]})),
        ("name list", call(["segment"], {"box": [0, 0, 10, 10]})),
        ("name object", call({"tool": "segment"}, {"box": [0, 0, 10, 10]})),
        ("arguments null", call("segment", None)),
        ("arguments list", call("segment", [[0, 0, 10, 10]])),
        ("arguments number", call("segment", 7)),
        ("arguments bad string", call("segment", "{box: [0, 0, 10, 10]}")),
        ("arguments string of list", call("segment", "[0, 0, 10, 10]")),
        ("arguments string with NaN", call("segment", '{"box": [0, 0, NaN, 10]}')),
        # --- unknown tools ---
        ("tool typo", call("segmentt", {"box": [0, 0, 10, 10]})),
        ("tool upper", call("SEGMENT", {"box": [0, 0, 10, 10]})),
        ("tool padded", call(" segment", {"box": [0, 0, 10, 10]})),
        ("tool empty", call("", {"box": [0, 0, 10, 10]})),
        ("tool method name", call("_tool_segment", {"box": [0, 0, 10, 10]})),
        ("tool dunder", call("__init__", {})),
        ("tool step", call("step", {"answer": "x"})),
        ("tool answer", call("answer", {"mask_ids": [1]})),
        ("tool nul", call("segment\x00", {"box": [0, 0, 10, 10]})),
        # --- missing or extra arguments ---
        ("segment nothing", call("segment", {})),
        ("segment view only", call("segment", {"view": 0})),
        ("segment labels only", call("segment", {"labels": [1]})),
        ("refine no mask_id", call("refine", {"points": [[5, 5]]})),
        ("refine no points", call("refine", {"mask_id": 1})),
        ("zoom no box", call("zoom_in", {})),
        ("submit no ids", call("submit", {})),
        ("segment extra prop", call("segment", {"box": [0, 0, 10, 10], "colour": "red"})),
        ("segment mask_id prop", call("segment", {"box": [0, 0, 10, 10], "mask_id": 1})),
        ("zoom extra points", call("zoom_in", {"box": [0, 0, 100, 100], "points": [[5, 5]]})),
        ("submit extra prop", call("submit", {"mask_ids": [1], "confidence": 0.9})),
        ("labels without points", call("segment", {"box": [0, 0, 10, 10], "labels": [1]})),
        # --- wrong types for coordinates ---
        ("box string", call("segment", {"box": "0,0,10,10"})),
        ("box object", call("segment", {"box": {"x0": 0, "y0": 0, "x1": 10, "y1": 10}})),
        ("box nested", call("segment", {"box": [[0, 0], [10, 10]]})),
        ("box null", call("segment", {"box": None})),
        ("box bool", call("segment", {"box": True})),
        ("box number", call("segment", {"box": 10})),
        ("box three", call("segment", {"box": [0, 0, 10]})),
        ("box five", call("segment", {"box": [0, 0, 10, 10, 10]})),
        ("box empty list", call("segment", {"box": []})),
        ("box strings", call("segment", {"box": ["0", "0", "10", "10"]})),
        ("box bools", call("segment", {"box": [False, False, True, True]})),
        ("box nulls", call("segment", {"box": [0, 0, None, 10]})),
        ("box fractional", call("segment", {"box": [0, 0, 10.5, 10]})),
        ("box object element", call("segment", {"box": [0, 0, {"v": 10}, 10]})),
        ("points flat", call("segment", {"points": [5, 5]})),
        ("points short", call("segment", {"points": [[5]]})),
        ("points long", call("segment", {"points": [[5, 5, 5]]})),
        ("points empty", call("segment", {"points": []})),
        ("points string", call("segment", {"points": "[[5, 5]]"})),
        ("points null element", call("segment", {"points": [[5, None]]})),
        ("points bool element", call("segment", {"points": [[True, 5]]})),
        ("points string element", call("segment", {"points": [["5", "5"]]})),
        ("points object", call("segment", {"points": [{"x": 5, "y": 5}]})),
        ("view string", call("segment", {"box": [0, 0, 10, 10], "view": "0"})),
        ("view null", call("segment", {"box": [0, 0, 10, 10], "view": None})),
        ("view bool", call("segment", {"box": [0, 0, 10, 10], "view": False})),
        ("view fractional", call("segment", {"box": [0, 0, 10, 10], "view": 0.5})),
        ("view list", call("segment", {"box": [0, 0, 10, 10], "view": [0]})),
        ("view object", call("segment", {"box": [0, 0, 10, 10], "view": {"id": 0}})),
        # --- non-finite and extreme numbers ---
        ("box NaN", call("segment", {"box": [0, 0, NAN, 10]})),
        ("box Infinity", call("segment", {"box": [0, 0, INF, 10]})),
        ("box -Infinity", call("segment", {"box": [-INF, 0, 10, 10]})),
        ("points NaN", call("segment", {"points": [[NAN, 5]]})),
        ("points Infinity", call("segment", {"points": [[5, INF]]})),
        ("labels NaN", call("segment", {"points": [[5, 5]], "labels": [NAN]})),
        ("view Infinity", call("segment", {"box": [0, 0, 10, 10], "view": INF})),
        ("mask_id NaN", call("refine", {"mask_id": NAN, "points": [[5, 5]]})),
        ("mask_ids -Infinity", call("submit", {"mask_ids": [-INF]})),
        ("box 1e308", call("segment", {"box": [0, 0, 1e308, 10]})),
        ("box -1e308", call("segment", {"box": [-1e308, 0, 10, 10]})),
        ("points 1e308", call("segment", {"points": [[1e308, 5]]})),
        ("view 1e308", call("segment", {"box": [0, 0, 10, 10], "view": 1e308})),
        ("mask_id 1e308", call("refine", {"mask_id": 1e308, "points": [[5, 5]]})),
        ("huge int", call("segment", {"box": [0, 0, 10 ** 40, 10]})),
        ("huge int point", call("segment", {"points": [[5, 10 ** 40]]})),
        ("too many digits", wrap('{"name": "segment", "arguments": {"box": [0, 0, ' + "9" * 5000 + ", 10]}}")),
        # --- geometry ---
        ("box negative", call("segment", {"box": [-5, 0, 10, 10]})),
        ("box far outside", call("segment", {"box": [5000, 5000, 6000, 6000]})),
        ("box past right edge", call("segment", {"box": [0, 0, 641, 10]})),
        ("box past bottom edge", call("segment", {"box": [0, 0, 10, 481]})),
        ("box x1 < x0", call("segment", {"box": [50, 0, 10, 10]})),
        ("box y1 < y0", call("segment", {"box": [0, 50, 10, 10]})),
        ("box zero width", call("segment", {"box": [10, 0, 10, 10]})),
        ("box zero height", call("segment", {"box": [0, 10, 10, 10]})),
        ("zoom box inverted", call("zoom_in", {"box": [300, 300, 100, 100]})),
        ("zoom box outside", call("zoom_in", {"box": [0, 0, 700, 100]})),
        ("point negative", call("segment", {"points": [[-1, 5]]})),
        ("point at width", call("segment", {"points": [[640, 5]]})),
        ("point at height", call("segment", {"points": [[5, 480]]})),
        ("point far outside", call("segment", {"points": [[10 ** 6, 10 ** 6]]})),
        ("refine point outside", call("refine", {"mask_id": 1, "points": [[5, 999]]})),
        # --- labels ---
        ("label 2", call("segment", {"points": [[5, 5]], "labels": [2]})),
        ("label -1", call("segment", {"points": [[5, 5]], "labels": [-1]})),
        ("label string", call("segment", {"points": [[5, 5]], "labels": ["1"]})),
        ("label bool", call("segment", {"points": [[5, 5]], "labels": [True]})),
        ("label null", call("segment", {"points": [[5, 5]], "labels": [None]})),
        ("label half", call("segment", {"points": [[5, 5]], "labels": [0.5]})),
        ("label nested", call("segment", {"points": [[5, 5]], "labels": [[1]]})),
        ("labels scalar", call("segment", {"points": [[5, 5]], "labels": 1})),
        ("labels short", call("segment", {"points": [[5, 5], [6, 6]], "labels": [1]})),
        ("labels long", call("segment", {"points": [[5, 5]], "labels": [1, 0]})),
        ("labels empty", call("segment", {"points": [[5, 5]], "labels": []})),
        ("refine labels short", call("refine", {"mask_id": 1, "points": [[5, 5], [7, 7]], "labels": [0]})),
        # --- ids that do not exist ---
        ("refine mask 2", call("refine", {"mask_id": 2, "points": [[5, 5]]})),
        ("refine mask 0", call("refine", {"mask_id": 0, "points": [[5, 5]]})),
        ("refine mask -1", call("refine", {"mask_id": -1, "points": [[5, 5]]})),
        ("refine mask string", call("refine", {"mask_id": "1", "points": [[5, 5]]})),
        ("refine mask null", call("refine", {"mask_id": None, "points": [[5, 5]]})),
        ("refine mask bool", call("refine", {"mask_id": True, "points": [[5, 5]]})),
        ("refine mask list", call("refine", {"mask_id": [1], "points": [[5, 5]]})),
        ("submit missing id", call("submit", {"mask_ids": [1, 99]})),
        ("submit id 0", call("submit", {"mask_ids": [0]})),
        ("submit duplicate", call("submit", {"mask_ids": [1, 1]})),
        ("submit string", call("submit", {"mask_ids": "1"})),
        ("submit int", call("submit", {"mask_ids": 1})),
        ("submit null", call("submit", {"mask_ids": None})),
        ("submit nested", call("submit", {"mask_ids": [[1]]})),
        ("submit string ids", call("submit", {"mask_ids": ["1"]})),
        ("submit bool ids", call("submit", {"mask_ids": [True]})),
        ("submit 65 ids", call("submit", {"mask_ids": list(range(1, 66))})),
        ("view 1 missing", call("segment", {"box": [0, 0, 10, 10], "view": 1})),
        ("view -1", call("segment", {"box": [0, 0, 10, 10], "view": -1})),
        ("view 99", call("zoom_in", {"box": [0, 0, 10, 10], "view": 99})),
        ("refine view 5", call("refine", {"mask_id": 1, "points": [[5, 5]], "view": 5})),
        # --- huge inputs ---
        ("25 points", call("segment", {"points": [[i, i] for i in range(MAX_POINTS + 1)]})),
        ("25 labels", call("segment", {"points": [[5, 5]] * (MAX_POINTS + 1), "labels": [1] * (MAX_POINTS + 1)})),
        ("1000 points", call("segment", {"points": [[i % 600, i % 400] for i in range(1000)]})),
        ("1e5 points", call("segment", {"points": [[i % 600, i % 400] for i in range(10 ** 5)]})),
        ("1e5 mask ids", call("submit", {"mask_ids": list(range(1, 10 ** 5 + 1))})),
        ("long think", wrap('{"name": "segment", "arguments": {"box": [0, 0, 10, 10]}}', "a" * MAX_ANSWER_CHARS)),
        ("long call", wrap('{"name": "segment", "arguments": {"box": [0, 0, 10, 10]}, "pad": "'
                           + "b" * MAX_CALL_CHARS + '"}')),
        ("megabyte", "x" * 10 ** 6),
        ("megabyte of tags", "<tool_call>" * 100_000),
        # --- deeply nested JSON ---
        ("nested list 3000", wrap('{"name": "segment", "arguments": {"box": ' + nested_list(3000) + "}}")),
        ("nested list 1e5", wrap(nested_list(100_000))),
        ("nested object 3000", wrap('{"name": "segment", "arguments": ' + nested_object(3000) + "}")),
        ("nested args string", call("segment", nested_list(3000))),
        ("nested list 50", call("segment", {"box": json.loads(nested_list(50))})),
        ("nested object 50", call("segment", {"view": json.loads(nested_object(50))})),
        # --- unicode garbage ---
        ("lone surrogate", "<think>\ud800</think><tool_call>\udfff</tool_call>"),
        ("surrogate tool", call("seg\ud800ment", {"box": [0, 0, 10, 10]})),
        ("nul bytes", "\x00" * 100),
        ("rtl override", "<think>\u202e</think><tool_call>\u202e" + seg_box + "</tool_call>"),
        ("zero width", "<think>x</think><tool_call>\u200b" + seg_box + "</tool_call>"),
        ("emoji json", wrap('{"name": "🔪", "arguments": {"box": [0, 0, 10, 10]}}')),
        ("cjk", "<think>分割狗</think><tool_call>{\"名\": \"segment\"}</tool_call>"),
        ("control chars in json", wrap('{"name": "segment\x07", "arguments": {"box": [0, 0, 10, 10]}}')),
        ("bom", "\ufeff<think>x</think><tool_call>\ufeff" + seg_box + "</tool_call>"),
        # --- not text at all ---
        ("None", None),
        ("bytes", VALID_SEGMENT.encode()),
        ("int", 42),
        ("float", 3.5),
        ("bool", True),
        ("list", [VALID_SEGMENT]),
        ("dict", {"name": "segment", "arguments": {"box": [0, 0, 10, 10]}}),
        ("object", object()),
    ]
    return cases


HAND_CASES = _hand_cases()

# Cases that the environment rejects correctly but whose turn record cannot be serialised (see
# test_rejected_turns_keep_the_trajectory_serialisable): the trajectory tests leave them out.
UNSERIALISABLE: set[str] = set()


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target(coco128_targets):
    return coco128_targets[0]  # 000000000009: 640x480


@pytest.fixture(scope="module")
def task(target):
    image = load_image(target.image_path)
    assert image.shape == (480, 640, 3)
    return EpisodeTask(image, target.query, target.sample_id, target.ground_truth(), str(target.image_path))


@pytest.fixture(scope="module")
def segmenter():
    return make_segmenter("grabcut")


@pytest.fixture(scope="module")
def shared_episode(task, segmenter):
    """One long episode with candidate 1 on view 0; every hand-written case is fed to it."""
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=BIG_TURNS))
    obs = ep.step(VALID_SEGMENT)
    assert ep.turns[-1].error is None and [c.id for c in ep.candidates] == [1], obs.text
    return ep


def assert_rejected(ep: Episode, answer: object) -> None:
    """Feed one bad answer; check the protocol's promises for a rejected turn."""
    turns, candidates, views = len(ep.turns), list(ep.candidates), list(ep.views)
    masks, current, left = dict(ep._masks), ep.current_view, ep.turns_left
    obs = ep.step(answer)  # must not raise
    assert obs.text.startswith("Error:"), obs.text[:300]
    assert obs.images == []
    assert len(ep.turns) == turns + 1
    turn = ep.turns[-1]
    assert turn.index == turns + 1
    assert isinstance(turn.error, str) and turn.error
    assert turn.format_ok is False
    assert turn.candidate_id is None and turn.view_id is None
    assert ep.candidates == candidates and ep.views == views
    assert ep._masks.keys() == masks.keys()
    assert ep.current_view == current
    assert ep.turns_left == left - 1
    assert not ep.done and ep.final == {}
    assert obs.text.endswith(f"({left - 1} turn{'s' if left - 1 != 1 else ''} left)")
    assert isinstance(turn.assistant, str)
    assert len(turn.error) < 1000, "error messages are shown to the model: keep them short"
    assert turn.answer_iou is not None and 0.0 <= turn.answer_iou <= 1.0


# --- hand-written cases --------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [c[1] for c in HAND_CASES], ids=[c[0] for c in HAND_CASES])
def test_hand_written_bad_answer_is_an_error_turn(shared_episode, answer):
    assert_rejected(shared_episode, answer)


def test_valid_calls_still_work_after_the_hand_written_cases(task, segmenter):
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=BIG_TURNS))
    for _, answer in HAND_CASES:
        assert_rejected(ep, answer)
    _check_valid_sequence(ep)
    _check_serialisable(ep, skip={i + 1 for i, (name, _) in enumerate(HAND_CASES) if name in UNSERIALISABLE})


# --- generated cases -----------------------------------------------------------------------------
ELEMENT_POOL = ["1", "", None, True, False, {}, [], {"k": 1}, 1.5, -0.25, NAN, INF, -INF, 1e308, -1e308,
                -3, 10 ** 6, "NaN", [1, 2]]
FIELD_POOL = ["x", "", None, True, False, {}, {"a": 1}, 1.5, NAN, INF, -INF, -7, "[[1, 2]]", 1e308, 10 ** 9]
GARBAGE_ALPHABET = (string.ascii_letters + string.digits + string.punctuation
                    + "\u00e9\u00df\u4e2d\u6587\u0416\u05d0\u0627\U0001f600\U0001f52a\u200b\u202e\ufeff\x00\x07")


class Fuzzer:
    """Makes answers that are invalid in the episode's current state (seeded, reproducible)."""

    def __init__(self, ep: Episode, rng: random.Random) -> None:
        self.ep, self.rng = ep, rng

    # valid calls in the current state, to mutate
    def _base(self) -> tuple[str, dict]:
        rng, ep = self.rng, self.ep
        w, h = ep.views[ep.current_view].size
        x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
        box = [x0, y0, rng.randrange(x0 + 1, w + 1), rng.randrange(y0 + 1, h + 1)]
        pts = [[rng.randrange(w), rng.randrange(h)] for _ in range(rng.randint(1, 4))]
        labels = [rng.randint(0, 1) for _ in pts]
        cid = ep.candidates[-1].id if ep.candidates else 1
        choices = [("segment", {"box": box}), ("segment", {"points": pts, "labels": labels}),
                   ("segment", {"box": box, "points": pts}), ("zoom_in", {"box": box}),
                   ("refine", {"mask_id": cid, "points": pts, "labels": labels}),
                   ("submit", {"mask_ids": [cid]})]
        name, args = rng.choice(choices)
        return name, json.loads(json.dumps(args))

    def _absent_id(self) -> int:
        n = len(self.ep.candidates)
        return self.rng.choice([n + 1, n + 2, n + 1000, 10 ** 9])

    def make(self) -> tuple[str, object]:
        rng = self.rng
        kind = rng.choice(["element", "field", "drop", "extra", "rename", "box", "labels", "outside",
                           "ids", "view", "truncate_json", "truncate_answer", "two_calls", "garbage",
                           "many_points", "nested", "args_string", "not_text", "inject"])
        name, args = self._base()
        maker = getattr(self, f"_{kind}")
        return kind, maker(name, args)

    def _element(self, name, args):
        lists = [k for k in ("box", "points", "labels", "mask_ids") if k in args]
        key = self.rng.choice(lists)
        bad = self.rng.choice(ELEMENT_POOL)
        if key == "points":
            pt = self.rng.choice(args["points"])
            pt[self.rng.randrange(2)] = bad
        else:
            args[key][self.rng.randrange(len(args[key]))] = bad
        return call(name, args)

    def _field(self, name, args):
        key = self.rng.choice(list(args) + (["view"] if name != "submit" else []))
        args[key] = self.rng.choice(FIELD_POOL)
        return call(name, args)

    def _drop(self, name, args):
        required = {"segment": ["box", "points"], "refine": ["mask_id", "points"], "zoom_in": ["box"],
                    "submit": ["mask_ids"]}[name]
        if name == "segment":
            args.pop("box", None)
            args.pop("points", None)
        else:
            args.pop(self.rng.choice(required))
        return call(name, args)

    def _extra(self, name, args):
        key = "".join(self.rng.choice(string.ascii_lowercase) for _ in range(self.rng.randint(1, 10)))
        while key in TOOLS[name].parameters["properties"]:
            key += "_x"
        args[key] = self.rng.choice(FIELD_POOL + [0, 1, [1]])
        return call(name, args)

    def _rename(self, name, args):
        options = [name.upper(), name + "_", "_" + name, name[:-1], name + " ", "tool", "segmentation",
                   "".join(self.rng.choice(string.ascii_letters + "_") for _ in range(self.rng.randint(1, 12)))]
        new = self.rng.choice(options)
        return call(new if new not in TOOLS else new + "!", args)

    def _box(self, name, args):
        w, h = self.ep.views[self.ep.current_view].size
        a, b = sorted(self.rng.sample(range(w), 2))
        c, d = sorted(self.rng.sample(range(h), 2))
        box = self.rng.choice([[b, c, a, d], [a, d, b, c], [a, c, a, d], [a, c, b, c], [b, d, a, c]])
        return call("zoom_in" if name == "zoom_in" else "segment", {"box": box})

    def _labels(self, name, args):
        pts = [[self.rng.randrange(50), self.rng.randrange(50)] for _ in range(self.rng.randint(1, 6))]
        if self.rng.random() < 0.5:  # length mismatch
            n = self.rng.choice([k for k in range(1, MAX_POINTS + 1) if k != len(pts)])
            labels = [self.rng.randint(0, 1) for _ in range(n)]
        else:  # a label that is not 0/1
            labels = [self.rng.randint(0, 1) for _ in pts]
            labels[self.rng.randrange(len(labels))] = self.rng.choice([2, 3, -1, 7, 255, 10 ** 6])
        if name == "refine":
            return call("refine", {"mask_id": args["mask_id"], "points": pts, "labels": labels})
        return call("segment", {"points": pts, "labels": labels})

    def _outside(self, name, args):
        w, h = self.ep.views[self.ep.current_view].size
        far = self.rng.choice([-1, -10, -10 ** 6, w, h + w, 10 ** 6, 10 ** 12])
        if name in ("segment", "zoom_in") and "box" in args:
            box = args["box"]
            i = self.rng.randrange(4)
            box[i] = (-abs(far) if i < 2 else (w if i == 2 else h) + abs(far))
            return call(name, args)
        pts = [[self.rng.randrange(w), self.rng.randrange(h)] for _ in range(3)]
        pts[self.rng.randrange(3)][self.rng.randrange(2)] = self.rng.choice([-1, -50, w + h, 10 ** 7])
        return call("segment", {"points": pts})

    def _ids(self, name, args):
        cid = self.ep.candidates[-1].id if self.ep.candidates else None
        if self.rng.random() < 0.5:
            return call("refine", {"mask_id": self._absent_id(), "points": [[1, 1]]})
        ids = ([cid] if cid else []) + [self._absent_id()]
        self.rng.shuffle(ids)
        return call("submit", {"mask_ids": ids})

    def _view(self, name, args):
        bad = self.rng.choice([len(self.ep.views), len(self.ep.views) + 3, 10 ** 5, -1, -100])
        if name == "submit":
            name, args = "segment", {"box": [0, 0, 5, 5]}
        args["view"] = bad
        return call(name, args)

    def _truncate_json(self, name, args):
        body = json.dumps({"name": name, "arguments": args})
        return wrap(body[: self.rng.randrange(len(body) - 1)])

    def _truncate_answer(self, name, args):
        answer = call(name, args)
        return answer[: self.rng.randrange(answer.rindex("</tool_call>") + len("</tool_call>") - 1)]

    def _two_calls(self, name, args):
        other_name, other_args = self._base()
        sep = self.rng.choice(["", "\n", " then ", "<think>again</think>"])
        return call(name, args) + sep + wrap(json.dumps({"name": other_name, "arguments": other_args}))

    def _garbage(self, name, args):
        parts = ["<think>", "</think>", "<tool_call>", "{", "}", '"name"', ":", "[", "]", ",", '"segment"']
        out = []
        for _ in range(self.rng.randint(0, 60)):
            if self.rng.random() < 0.2:
                out.append(self.rng.choice(parts))
            else:
                out.append(self.rng.choice(GARBAGE_ALPHABET))
        text = "".join(out)
        return text.replace("</tool_call>", "")  # no closed call: nothing to execute

    def _many_points(self, name, args):
        n = self.rng.choice([MAX_POINTS + 1, 40, 200, 2000, 10 ** 5])
        pts = [[self.rng.randrange(100), self.rng.randrange(100)] for _ in range(n)]
        if name == "refine":
            return call("refine", {"mask_id": args["mask_id"], "points": pts})
        return call("segment", {"points": pts})

    def _nested(self, name, args):
        depth = self.rng.choice([2, 5, 20, 3000, 5000])
        value = nested_list(depth) if self.rng.random() < 0.5 else nested_object(depth)
        key = self.rng.choice(list(args))
        body = json.dumps({"name": name, "arguments": {**args, key: "@@"}}).replace('"@@"', value)
        return wrap(body)

    def _args_string(self, name, args):
        text = json.dumps(args)
        text = text[: self.rng.randrange(len(text) - 1)]  # a string that is not valid JSON
        return wrap(json.dumps({"name": name, "arguments": text}))

    def _not_text(self, name, args):
        return self.rng.choice([None, b"<think></think>", 0, -1, 2.5, [], {}, (1, 2), {"name": name}, Ellipsis])

    def _inject(self, name, args):
        """Insert a non-whitespace, non-JSON character somewhere inside the JSON body."""
        body = json.dumps({"name": name, "arguments": args})
        i = self.rng.randrange(1, len(body))
        ch = self.rng.choice("@#$%^&\\|`~\u00a7\u4e2d\U0001f600\x01")
        return wrap(body[:i] + ch + body[i:])


def test_generated_bad_answers_with_valid_calls_interleaved(task, segmenter):
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=BIG_TURNS))
    fuzzer = Fuzzer(ep, random.Random(20240607))
    kinds: dict[str, int] = {}
    valid_turns = []
    for i in range(400):
        if i % 50 == 25:
            valid_turns.append(len(ep.turns) + 1)
            _check_one_valid_step(ep, i // 50)
            continue
        kind, answer = fuzzer.make()
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            assert_rejected(ep, answer)
        except AssertionError as exc:
            raise AssertionError(f"case {i} ({kind}): {answer!r:.500}") from exc
    assert len(ep.turns) == 400
    assert sum(kinds.values()) >= 390 and len(kinds) >= 15, kinds
    assert all(ep.turns[t - 1].error is None for t in valid_turns)
    _check_valid_sequence(ep)
    _check_serialisable(ep)


def _check_one_valid_step(ep: Episode, k: int) -> None:
    """A valid call in the middle of the fuzzing: it must act exactly as on a fresh episode."""
    n_cand, n_views = len(ep.candidates), len(ep.views)
    if k % 3 == 2:
        obs = ep.step(format_answer("closer", "zoom_in", {"box": [200, 150, 440, 330], "view": 0}))
        assert ep.turns[-1].error is None, obs.text
        assert len(ep.views) == n_views + 1 and ep.current_view == n_views
        assert ep.turns[-1].format_ok is True
        return
    view = ep.current_view
    w, h = ep.views[view].size
    obs = ep.step(format_answer("box it", "segment", {"box": [w // 4, h // 4, 3 * w // 4, 3 * h // 4]}))
    turn = ep.turns[-1]
    assert turn.error is None and turn.format_ok is True, obs.text
    assert turn.candidate_id == n_cand + 1 == ep.candidates[-1].id
    assert ep.candidates[-1].view_id == view
    assert obs.images and obs.images[0].mask_ids == (n_cand + 1,)


def _check_valid_sequence(ep: Episode) -> None:
    """segment -> refine -> zoom_in -> segment on the zoomed view -> submit: all work after fuzzing."""
    n = len(ep.candidates)
    obs = ep.step(format_answer("box", "segment", {"box": [100, 100, 400, 400], "view": 0}))
    assert ep.turns[-1].error is None, obs.text
    first = n + 1
    assert ep.candidates[-1].id == first and ep.candidates[-1].prompt == {"box": [100.0, 100.0, 400.0, 400.0]}
    obs = ep.step(format_answer("click", "refine", {"mask_id": first, "points": [[250, 250]], "labels": [1]}))
    assert ep.turns[-1].error is None, obs.text
    assert ep.candidates[-1].id == first + 1 and ep.candidates[-1].parent == first
    obs = ep.step(format_answer("zoom", "zoom_in", {"box": [0, 0, 320, 240], "view": 0}))
    assert ep.turns[-1].error is None, obs.text
    zoomed = ep.views[-1]
    assert zoomed.box == (0, 0, 320, 240) and zoomed.size == (640, 480)
    obs = ep.step(format_answer("box", "segment", {"box": [0, 0, 640, 480], "view": zoomed.id}))
    assert ep.turns[-1].error is None, obs.text
    assert not ep.mask(first + 2)[:, 320:].any() and not ep.mask(first + 2)[240:, :].any()
    obs = ep.step(format_answer("done", "submit", {"mask_ids": [first, first + 2]}))
    assert ep.turns[-1].error is None, obs.text
    assert ep.done and ep.final["reason"] == "submit" and ep.final["mask_ids"] == [first, first + 2]
    assert np.array_equal(ep.answer(), ep.mask(first) | ep.mask(first + 2))
    with pytest.raises(RuntimeError):
        ep.step(VALID_SEGMENT)


def _check_serialisable(ep: Episode, skip: set[int] = frozenset()) -> None:
    """The record of a fuzzed episode is strict JSON and reloads to the same document."""
    traj = ep.trajectory()
    traj.turns = [t for t in traj.turns if t.index not in skip]
    doc = traj.to_dict()
    text = json.dumps(doc, allow_nan=False)
    again = Trajectory.from_dict(json.loads(text))
    assert again.to_dict() == json.loads(text)
    assert len(again.turns) == len(ep.turns) - len(skip)


# --- tolerated departures: executed, but not strictly well-formed ----------------------------------
@pytest.mark.parametrize("answer", [
    '<think>x</think>\n<tool_call>\n```json\n{"name": "segment", "arguments": {"box": [0, 0, 200, 200]}}\n```\n</tool_call>',
    '<think>x</think><tool_call>{"name": "segment", "arguments": "{\\"box\\": [0, 0, 200, 200]}"}</tool_call>',
    '<think>x</think><tool_call>{"name": "segment", "arguments": {"box": [0, 0, 200, 200]}, "id": 7}</tool_call>',
    '<tool_call>{"name": "segment", "arguments": {"box": [0, 0, 200, 200]}}</tool_call>',
    'Sure! <think>x</think><tool_call>{"name": "segment", "arguments": {"box": [0, 0, 200, 200]}}</tool_call>',
    '<think>x</think><tool_call>{"name": "segment", "arguments": {"box": [0, 0, 200, 200]}}</tool_call> done',
    '<think>a</think><think>b</think><tool_call>{"name": "segment", "arguments": {"box": [0, 0, 200, 200]}}</tool_call>',
], ids=["fence", "string-arguments", "extra-key", "no-think", "text-before", "text-after", "two-thinks"])
def test_tolerated_departures_execute_but_clear_format_ok(task, segmenter, answer):
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=3))
    obs = ep.step(answer)
    turn = ep.turns[-1]
    assert turn.error is None, obs.text
    assert turn.candidate_id == 1 and turn.format_ok is False
    assert obs.text.startswith("Candidate 1 on view 0")


def test_strict_answer_is_format_ok_and_integral_floats_are_accepted(task, segmenter):
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=3))
    ep.step(format_answer("box", "segment", {"box": [0.0, 0, 200, 200.0]}))
    assert ep.turns[-1].error is None and ep.turns[-1].format_ok is True
    assert ep.candidates[-1].prompt["box"] == [0.0, 0.0, 200.0, 200.0]


# --- known serialisation bugs (see the report) --------------------------------------------------
@pytest.mark.parametrize("body", [
    '{"name": "segment", "arguments": {"box": [0, 0, 1e999, 10]}}',
    '{"name": "segment", "arguments": "{\\"box\\": [0, 0, 1e999, 10]}"}',
    '{"name": "segment", "arguments": {"box": ' + nested_list(900) + "}}",
    '{"name": "segment", "arguments": {"view": ' + nested_object(900) + "}}",
], ids=["overflow-1e999", "overflow-in-string-arguments", "nested-list-900", "nested-object-900"])
def test_rejected_turns_keep_the_trajectory_serialisable(task, segmenter, tmp_path, body):
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=2))
    assert_rejected(ep, wrap(body))
    ep.step(format_answer("none", "submit", {"mask_ids": []}))
    ep.trajectory().save(tmp_path / "t.json")  # raises ValueError / RecursionError today
    assert Trajectory.load(tmp_path / "t.json").turns[0].error


@pytest.mark.parametrize("answer", [
    call("s" * 7000, {"box": [0, 0, 10, 10]}),
    wrap('{"name": "segment", "arguments": {"box": [0, 0, ' + "9" * 4000 + ', 10]}}'),
    wrap('{"name": "refine", "arguments": {"mask_id": ' + "9" * 4000 + ', "points": [[1, 1]]}}'),
], ids=["long-tool-name", "4000-digit-box", "4000-digit-mask-id"])
def test_error_observations_stay_short(task, segmenter, answer):
    ep = Episode(task, segmenter, EpisodeConfig(max_turns=2))
    obs = ep.step(answer)
    assert obs.text.startswith("Error:")
    assert len(ep.turns[-1].error) < 1000
