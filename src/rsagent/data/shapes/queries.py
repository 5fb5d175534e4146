"""Queries over a scene graph: programs, their text, a parser that reads the text back, and the resolver.

A query is a small program (a dict) rendered to text by one fixed grammar, so that `parse(text)`
gives the program back and `resolve(program, scene)` gives its target set from the scene graph alone.
Generation proposes programs and keeps those that single out exactly their targets *clearly*
(margins on positions and sizes); resolution applies the exact definitions in docs/shapes.md.
"""

from __future__ import annotations

import re

import numpy as np

from rsagent.data.shapes.scene import COLOURS, CORNERS, KINDS, ROUND, SIZES, Scene, Shape, plural

Desc = tuple[str | None, str | None, str | None]  # (size word, colour, kind); None = any
QUERY_KINDS = ("attribute", "position", "ordinal", "relation", "reasoning", "multi", "absent")
RELATIONS = ("above", "below", "left of", "right of", "touching", "in front of", "behind")
ORDINALS = ("first", "second", "third", "fourth")
EXTREMES = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
REASONING = {"roll": "the shape that could roll", "odd": "the odd one out",
             "corners": "the shape with the most corners", "unique_colour": "the shape whose colour appears nowhere else",
             "hole": "the shape with a hole", "largest": "the largest shape", "smallest": "the smallest shape"}
POSITION_MARGIN = 3.0  # pixels between the target and the next candidate along an ordering
RELATION_MARGIN = 2.0  # pixels by which a box relation holds for the target and fails for the others
SIZE_RATIO = 1.3  # radius ratio separating shapes told apart by size


# --- text ------------------------------------------------------------------------------------------
def desc_text(desc: Desc, many: bool = False) -> str:
    size, colour, kind = desc
    noun = kind or "shape"
    return " ".join(w for w in (size, colour, plural(noun) if many else noun) if w)


def text(program: dict) -> str:
    op = program["op"]
    if op == "the":
        return f"the {desc_text(program['desc'])}"
    if op == "all":
        return f"all the {desc_text(program['desc'], many=True)}"
    if op == "extreme":
        return f"the {EXTREMES[program['dir']]} {desc_text(program['desc'])}"
    if op == "ordinal":
        return f"the {ORDINALS[program['n'] - 1]} {desc_text(program['desc'])} from the {program['dir']}"
    if op == "relation":
        return f"the {desc_text(program['desc'])} {program['rel']} the {desc_text(program['anchor'])}"
    return REASONING[op]


_SIZE = "|".join(SIZES)
_COLOUR = "|".join(COLOURS)
_NOUN = "|".join(list(KINDS) + ["shape"])
_NOUNS = "|".join([plural(k) for k in KINDS] + ["shapes"])
_DESC = rf"(?:({_SIZE}) )?(?:({_COLOUR}) )?({_NOUN})"
_DESCS = rf"(?:({_SIZE}) )?(?:({_COLOUR}) )?({_NOUNS})"
_PATTERNS = [
    ("all", re.compile(rf"all the {_DESCS}")),
    ("extreme", re.compile(rf"the ({'|'.join(EXTREMES.values())}) {_DESC}")),
    ("ordinal", re.compile(rf"the ({'|'.join(ORDINALS)}) {_DESC} from the (left|right|top|bottom)")),
    ("relation", re.compile(rf"the {_DESC} ({'|'.join(RELATIONS)}) the {_DESC}")),
    ("the", re.compile(rf"the {_DESC}")),
]
_SINGULAR = {plural(k): k for k in KINDS} | {"shapes": "shape"}


def _desc(size, colour, noun) -> Desc:
    noun = _SINGULAR.get(noun, noun)
    return (size, colour, None if noun == "shape" else noun)


def parse(query: str) -> dict:
    """The program a query's text says (ValueError for text outside the grammar)."""
    for op, phrase in REASONING.items():
        if query == phrase:
            return {"op": op}
    for op, pattern in _PATTERNS:
        m = pattern.fullmatch(query)
        if not m:
            continue
        g = m.groups()
        if op in ("all", "the"):
            return {"op": op, "desc": _desc(*g)}
        if op == "extreme":
            direction = next(k for k, v in EXTREMES.items() if v == g[0])
            return {"op": op, "dir": direction, "desc": _desc(*g[1:4])}
        if op == "ordinal":
            return {"op": op, "n": ORDINALS.index(g[0]) + 1, "desc": _desc(*g[1:4]), "dir": g[4]}
        return {"op": op, "desc": _desc(*g[0:3]), "rel": g[3], "anchor": _desc(*g[4:7])}
    raise ValueError(f"not a shapes query: {query!r}")


# --- resolution (the exact definitions) -------------------------------------------------------------
def matches(desc: Desc, shapes: list[Shape]) -> list[Shape]:
    size, colour, kind = desc
    return [s for s in shapes if (size is None or s.size == size) and (colour is None or s.colour == colour)
            and (kind is None or s.kind == kind)]


def _coord(s: Shape, direction: str) -> float:
    """Smaller = further in `direction`."""
    cx, cy = s.centre
    return {"left": cx, "right": -cx, "top": cy, "bottom": -cy}[direction]


def relation_gap(rel: str, s: Shape, anchor: Shape, scene: Scene) -> float:
    """How far (pixels) the box relation holds (> = 0: holds); touching / in front / behind: 1 or -1."""
    a, b = s.box, anchor.box
    if rel == "above":
        return b[1] - a[3]
    if rel == "below":
        return a[1] - b[3]
    if rel == "left of":
        return b[0] - a[2]
    if rel == "right of":
        return a[0] - b[2]
    if rel == "touching":
        return 1.0 if scene.touches(s.id, anchor.id) else -1.0
    if rel == "in front of":
        return 1.0 if (s.id, anchor.id) in scene.occludes else -1.0
    if rel == "behind":
        return 1.0 if (anchor.id, s.id) in scene.occludes else -1.0
    raise ValueError(f"unknown relation {rel!r}")


def _odd(shapes: list[Shape]) -> list[Shape]:
    kinds = [s.kind for s in shapes]
    lone = [s for s in shapes if kinds.count(s.kind) == 1]
    if len(shapes) >= 3 and len(lone) == 1 and len(set(kinds)) == 2:
        return lone
    return []


def _extreme_by(shapes: list[Shape], key, largest: bool) -> list[Shape]:
    if not shapes:
        return []
    best = max(key(s) for s in shapes) if largest else min(key(s) for s in shapes)
    return [s for s in shapes if key(s) == best]


def resolve(program: dict, scene: Scene) -> list[int]:
    """Ids of the shapes the program names, ascending (empty: nothing matches)."""
    shapes, op = scene.shapes, program["op"]
    if op in ("the", "all"):
        found = matches(program["desc"], shapes)
    elif op == "extreme":
        cands = matches(program["desc"], shapes)
        found = _extreme_by(cands, lambda s: _coord(s, program["dir"]), largest=False)
    elif op == "ordinal":
        cands = sorted(matches(program["desc"], shapes), key=lambda s: _coord(s, program["dir"]))
        found = [cands[program["n"] - 1]] if len(cands) >= program["n"] else []
    elif op == "relation":
        anchors = matches(program["anchor"], shapes)
        if len(anchors) != 1:
            return []
        found = [s for s in matches(program["desc"], shapes)
                 if s.id != anchors[0].id and relation_gap(program["rel"], s, anchors[0], scene) >= 0]
    elif op == "roll":
        found = [s for s in shapes if s.kind in ROUND]
    elif op == "hole":
        found = [s for s in shapes if s.kind == "ring"]
    elif op == "odd":
        found = _odd(shapes)
    elif op == "corners":
        found = _extreme_by(shapes, lambda s: CORNERS[s.kind], largest=True)
    elif op == "unique_colour":
        colours = [s.colour for s in shapes]
        found = [s for s in shapes if colours.count(s.colour) == 1]
    elif op in ("largest", "smallest"):
        found = _extreme_by(shapes, lambda s: int(s.full.sum()), largest=op == "largest")
    else:
        raise ValueError(f"unknown query op {op!r}")
    return sorted(s.id for s in found)


# --- generation --------------------------------------------------------------------------------------
def _descs_of(s: Shape) -> list[Desc]:
    return [(None, None, s.kind), (None, s.colour, None), (None, s.colour, s.kind), (s.size, s.colour, s.kind),
            (s.size, None, s.kind)]


def _clear_unique(desc: Desc, target: Shape, shapes: list[Shape]) -> bool:
    """`desc` names only `target`, and a size word, when used, is not a near call."""
    if [s.id for s in matches(desc, shapes)] != [target.id]:
        return False
    if desc[0] is None:
        return True
    rivals = matches((None, desc[1], desc[2]), shapes)
    return all(max(s.radius, target.radius) / min(s.radius, target.radius) >= SIZE_RATIO
               for s in rivals if s.id != target.id)


def _ordered_clear(cands: list[Shape], direction: str, rank: int) -> bool:
    """The shape at `rank` (0-based) of the ordering is at least POSITION_MARGIN from its neighbours."""
    values = sorted(_coord(s, direction) for s in cands)
    gaps = [values[i + 1] - values[i] for i in (rank - 1, rank) if 0 <= i < len(values) - 1]
    return all(g >= POSITION_MARGIN for g in gaps)


def desc_form(desc: Desc) -> str:
    """Which words a description uses: "kind", "colour", "colour kind", "size colour kind" or "size kind"
    (the five forms of an attribute query)."""
    return " ".join(word for word, value in zip(("size", "colour", "kind"), desc) if value is not None)


def _clearly_not_size(word: str, shapes: list[Shape], side: int) -> bool:
    """No shape of `shapes` is `word`-sized or a near call: each radius is SIZE_RATIO outside the word's range."""
    lo, hi = (f * side for f in SIZES[word])
    return all(s.radius >= hi * SIZE_RATIO or s.radius * SIZE_RATIO <= lo for s in shapes)


def _absent_descs(scene: Scene) -> list[Desc]:
    """Descriptions in every attribute form that name no shape of `scene`, clearly: a kind or a colour no
    shape has; a present colour with a present kind never seen together (else an unseen colour); a size word
    no shape of that colour and kind (or of that kind) comes near."""
    shapes = scene.shapes
    present = {(s.colour, s.kind) for s in shapes}
    colours, kinds = sorted({s.colour for s in shapes}), sorted({s.kind for s in shapes})
    out: list[Desc] = [(None, None, k) for k in KINDS if k not in kinds]
    out += [(None, c, None) for c in COLOURS if c not in colours]
    pairs = [(None, c, k) for c in colours for k in kinds if (c, k) not in present]
    out += pairs or [(None, c, k) for c in COLOURS for k in kinds if (c, k) not in present]
    for word in SIZES:
        out += [(word, c, k) for c in colours for k in kinds
                if _clearly_not_size(word, matches((None, c, k), shapes), scene.size)]
        out += [(word, None, k) for k in kinds if _clearly_not_size(word, matches((None, None, k), shapes), scene.size)]
    return out


def absent_weights(programs: list[dict], scene: Scene) -> list[float]:
    """Weights for drawing one of `programs` (absent queries of `scene`) so that their forms come as often as
    the forms of the scene's own attribute queries: the words a query uses then say nothing about whether its
    target exists (docs/shapes.md, 2026-11-29 (u)). Uniform when the scene has no attribute query of any form
    offered."""
    attribute = [desc_form(p["desc"]) for p in candidates("attribute", scene)]
    forms = [desc_form(p["desc"]) for p in programs]
    weights = [attribute.count(f) / forms.count(f) for f in forms]
    return weights if sum(weights) > 0 else [1.0] * len(programs)


def candidates(kind: str, scene: Scene) -> list[dict]:
    """Every program of query kind `kind` that names its targets clearly in `scene`."""
    shapes = scene.shapes
    out: list[dict] = []
    if kind == "attribute":
        for s in shapes:
            out += [{"op": "the", "desc": d} for d in _descs_of(s) if _clear_unique(d, s, shapes)]
    elif kind == "absent":
        out = [{"op": "the", "desc": d} for d in _absent_descs(scene)]
    elif kind == "multi":
        descs = {d for s in shapes for d in [(None, s.colour, None), (None, None, s.kind), (None, s.colour, s.kind)]}
        out = [{"op": "all", "desc": d} for d in sorted(descs, key=str) if len(matches(d, shapes)) >= 2]
    elif kind in ("position", "ordinal"):
        descs = {d for s in shapes for d in [(None, None, None), (None, s.colour, None), (None, None, s.kind),
                                             (None, s.colour, s.kind)]}
        for d in sorted(descs, key=str):
            cands = matches(d, shapes)
            if len(cands) < 2:
                continue
            for direction in EXTREMES:
                if kind == "position":
                    if _ordered_clear(cands, direction, 0):
                        out.append({"op": "extreme", "dir": direction, "desc": d})
                else:
                    for n in range(1, min(len(cands), len(ORDINALS)) + 1):
                        if _ordered_clear(cands, direction, n - 1):
                            out.append({"op": "ordinal", "n": n, "dir": direction, "desc": d})
    elif kind == "relation":
        for anchor in shapes:
            for ad in [(None, anchor.colour, anchor.kind), (None, None, anchor.kind), (None, anchor.colour, None)]:
                if not _clear_unique(ad, anchor, shapes):
                    continue
                for rel in RELATIONS:
                    for target in shapes:
                        if target.id == anchor.id:
                            continue
                        for d in [(None, None, target.kind), (None, target.colour, target.kind), (None, None, None)]:
                            program = {"op": "relation", "desc": d, "rel": rel, "anchor": ad}
                            if _relation_clear(program, target, anchor, scene):
                                out.append(program)
    elif kind == "reasoning":
        out = [{"op": op} for op in REASONING if _reasoning_clear(op, scene)]
    else:
        raise ValueError(f"unknown query kind {kind!r}; kinds: {', '.join(QUERY_KINDS)}")
    return out


def _relation_clear(program: dict, target: Shape, anchor: Shape, scene: Scene) -> bool:
    rel = program["rel"]
    others = [s for s in matches(program["desc"], scene.shapes) if s.id != anchor.id]
    if target not in others or relation_gap(rel, target, anchor, scene) < (RELATION_MARGIN if rel in
                                                                            ("above", "below", "left of", "right of") else 0):
        return False
    limit = -RELATION_MARGIN if rel in ("above", "below", "left of", "right of") else 0
    return all(relation_gap(rel, s, anchor, scene) < limit for s in others if s.id != target.id)


def _reasoning_clear(op: str, scene: Scene) -> bool:
    ids = resolve({"op": op}, scene)
    if len(ids) != 1:
        return False
    if op in ("largest", "smallest"):
        areas = sorted(int(s.full.sum()) for s in scene.shapes)
        if len(areas) < 2:
            return False
        a, b = (areas[-1], areas[-2]) if op == "largest" else (areas[1], areas[0])
        return a >= SIZE_RATIO ** 2 * b
    if op == "corners":
        counts = sorted(CORNERS[s.kind] for s in scene.shapes)
        return len(counts) >= 2 and counts[-1] > counts[-2]
    return len(scene.shapes) >= 2


def mentions(program: dict) -> list[Desc]:
    """The descriptions a program's text contains."""
    return [program[k] for k in ("desc", "anchor") if k in program]


def choose(rng: np.random.Generator, programs: list[dict]) -> dict:
    return programs[int(rng.integers(len(programs)))]
