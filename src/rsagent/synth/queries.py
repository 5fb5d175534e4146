"""Referring and reasoning queries written from an image's instance list, each checked to name
exactly its targets.

Every query carries a `spec`: its meaning as JSON-able data. `resolve(spec, image)` computes the
instances a spec names from the instance list alone, with fixed margins so a person would agree
("the person on the left" needs a person clearly left of every other one). The generator proposes
(text, spec, targets) and keeps a query only when `resolve` gives back exactly its targets; the two
never share the choice of target, so a wrong proposal is dropped instead of written.

Crowd regions and instances below `min_target_fraction` of the image are never targets, but they
count: a small second cup makes "the cup" ambiguous, and a category with a crowd in the image is
never referred to (its members cannot be told apart from the crowd).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rsagent.core.errors import RsagentError
from rsagent.data.instances import Instance, InstanceImage
from rsagent.data.yoloseg import COCO80
from rsagent.synth.affordances import USES, Use, uses_of

__all__ = ["KINDS", "GeneratedQuery", "QueryConfig", "generate_queries", "neighbour", "resolve"]

KINDS = ("referring", "reasoning", "group", "absent")
SIDES = ("left", "right", "top", "bottom")
RELATIONS = ("left of", "right of", "above", "below", "next to")
MARGIN = 0.05  # "clearly left of": centres this fraction of the image apart, and the centre outside the other's box
SIZE_RATIO = 2.0  # "the largest": at least this many times the area of every other one
NEAR = 0.03  # "next to": boxes at most this fraction of the image's long side apart
NEAR_DOUBT = 3.0  # another one within this many times NEAR of the anchor could be meant as well
MAX_ORDINAL = 5  # "the fifth from the left" is about as far as people count


@dataclass(frozen=True)
class GeneratedQuery:
    text: str
    kind: str  # one of KINDS
    targets: tuple[int, ...]  # instance indices; () for an absent query
    spec: dict  # the structured meaning, resolved by `resolve`


@dataclass(frozen=True)
class QueryConfig:
    per_target: int = 2  # queries per target instance, of different kinds where possible
    reasoning_share: float = 0.5  # chance a target's queries include a reasoning one when one is well defined
    group_share: float = 0.5  # chance each well-defined group ("all the cups", "everything to sit on") is asked
    absent_rate: float = 0.05  # share of absent queries among all
    min_target_fraction: float = 0.002  # smaller instances are not targets (they still count for uniqueness)
    max_per_image: int | None = 16  # crowded images do not dominate a run

    def __post_init__(self) -> None:
        if self.per_target < 1:
            raise RsagentError(f"per_target must be at least 1, got {self.per_target}")
        for name in ("reasoning_share", "group_share", "min_target_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RsagentError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.absent_rate < 1.0:
            raise RsagentError(f"absent_rate must be within [0, 1), got {self.absent_rate}")
        if self.max_per_image is not None and self.max_per_image < 1:
            raise RsagentError(f"max_per_image must be at least 1, got {self.max_per_image}")


# --- geometry --------------------------------------------------------------------------------------------
def _centre(inst: Instance, axis: int) -> float:
    return (inst.box[axis] + inst.box[axis + 2]) / 2


def _overlap(a: Instance, b: Instance, axis: int) -> float:
    """Length of the overlap of the two boxes' extents along an axis (0: x, 1: y)."""
    return min(a.box[axis + 2], b.box[axis + 2]) - max(a.box[axis], b.box[axis])


def _gap(a: Instance, b: Instance) -> float:
    """Distance between two boxes (0 when they touch or overlap)."""
    return math.hypot(max(0.0, -_overlap(a, b, 0)), max(0.0, -_overlap(a, b, 1)))


def _extent(image: InstanceImage, axis: int) -> int:
    return image.width if axis == 0 else image.height


def _clearly_before(a: Instance, b: Instance, axis: int, image: InstanceImage) -> bool:
    """a is clearly left of (axis 0) or above (axis 1) b: its centre lies before b's box and at a margin
    from b's centre. Transitive, so ranks built on it are consistent."""
    ca, cb = _centre(a, axis), _centre(b, axis)
    return ca < b.box[axis] and cb - ca >= MARGIN * _extent(image, axis)


def _order(side: str, image: InstanceImage) -> Callable[[Instance, Instance], bool]:
    """before(a, b) for counting from a side: a comes before b, clearly."""
    axis = 0 if side in ("left", "right") else 1
    if side in ("left", "top"):
        return lambda a, b: _clearly_before(a, b, axis, image)
    return lambda a, b: _clearly_before(b, a, axis, image)


def _size_order(extreme: str) -> Callable[[Instance, Instance], bool]:
    def bigger(a: Instance, b: Instance) -> bool:
        return a.area > 0 and a.area >= SIZE_RATIO * b.area

    return bigger if extreme == "largest" else (lambda a, b: bigger(b, a))


def _rank(cands: Sequence[Instance], before: Callable[[Instance, Instance], bool], n: int) -> frozenset[int]:
    """The instances that could be the n-th under a strict partial order: those whose rank range
    [1 + #before, N - #after] holds n, plus any instance not clearly ordered against one of them.
    One instance comes back only when its rank is exactly n."""
    fits = []
    for x in cands:
        ahead = sum(before(y, x) for y in cands if y is not x)
        behind = sum(before(x, y) for y in cands if y is not x)
        if ahead + 1 <= n <= len(cands) - behind:
            fits.append(x)
    out = {x.index for x in fits}
    for x in fits:
        out |= {y.index for y in cands if y is not x and not before(x, y) and not before(y, x)}
    return frozenset(out)


def _related(x: Instance, anchor: Instance, relation: str, image: InstanceImage, strict: bool) -> bool:
    """x stands in `relation` to the anchor: clearly (strict), or so that it could be meant (not strict)."""
    if relation == "next to":
        if not strict:
            return _gap(x, anchor) <= NEAR_DOUBT * NEAR * max(image.width, image.height)
        inside = max(0.0, _overlap(x, anchor, 0)) * max(0.0, _overlap(x, anchor, 1))
        smaller = min(_box_area(x), _box_area(anchor))
        return _gap(x, anchor) <= NEAR * max(image.width, image.height) and inside < 0.5 * smaller
    axis = 0 if relation in ("left of", "right of") else 1
    first, second = (x, anchor) if relation in ("left of", "above") else (anchor, x)
    across = _overlap(x, anchor, 1 - axis)  # "left of" means beside it, not far above or below it
    if not strict:
        return _centre(first, axis) < _centre(second, axis) and across > -MARGIN * _extent(image, 1 - axis)
    return _clearly_before(first, second, axis, image) and across > 0


def _box_area(inst: Instance) -> float:
    return max(0.0, inst.box[2] - inst.box[0]) * max(0.0, inst.box[3] - inst.box[1])


# --- meaning ---------------------------------------------------------------------------------------------
def resolve(spec: dict, image: InstanceImage) -> frozenset[int]:
    """The instances `spec` names in `image`, from the instance list alone (crowds and tiny ones
    included). An ambiguous spec gives back every instance that could be meant, so it singles out
    one instance only when a person would agree; one whose condition nothing meets gives frozenset()."""
    kind = spec.get("type")
    if kind in ("affordance", "absent") and "use" in spec:
        use = USES[spec["use"]]
        return frozenset(i.index for i in image.instances if i.category in use.categories)
    cands = [i for i in image.instances if i.category == spec["category"]]
    if kind in ("category", "absent") or any(c.crowd for c in cands):
        return frozenset(c.index for c in cands)  # with a crowd no member can be singled out
    if kind == "position":
        return _rank(cands, _order(spec["side"], image), 1)
    if kind == "ordinal":
        return _rank(cands, _order(spec["from"], image), int(spec["n"]))
    if kind == "size":
        return _rank(cands, _size_order(spec["extreme"]), 1)
    if kind == "relation":
        return _resolve_relation(cands, spec, image)
    raise ValueError(f"unknown query spec type {kind!r}")


def _resolve_relation(cands: list[Instance], spec: dict, image: InstanceImage) -> frozenset[int]:
    anchors = [i for i in image.instances if i.category == spec["anchor"]]
    if spec["anchor"] == spec["category"] or len(anchors) != 1 or anchors[0].crowd:
        return frozenset()  # "the laptop" names no single anchor
    anchor, relation = anchors[0], spec["relation"]
    if not any(_related(x, anchor, relation, image, strict=True) for x in cands):
        return frozenset()
    return frozenset(x.index for x in cands if _related(x, anchor, relation, image, strict=False))


# --- wording ---------------------------------------------------------------------------------------------
CATEGORY = ("the {c}", "the {c} in the picture", "find the {c}", "where is the {c}?", "the {c} in this image")
POSITION = {
    "left": ("the {c} on the left", "the leftmost {c}", "the {c} furthest to the left", "the {c} at the far left"),
    "right": ("the {c} on the right", "the rightmost {c}", "the {c} furthest to the right", "the {c} at the far right"),
    "top": ("the {c} at the top", "the topmost {c}", "the highest {c} in the picture", "the {c} nearest the top"),
    "bottom": ("the {c} at the bottom", "the lowest {c} in the picture", "the bottommost {c}",
               "the {c} nearest the bottom"),
}
ORDINAL = ("the {nth} {c} from the {side}", "the {nth} {c} counting from the {side}",
           "counting from the {side}, the {nth} {c}")
NTH = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}
SIZE = {"largest": ("the largest {c}", "the biggest {c}", "the {c} that takes up the most space"),
        "smallest": ("the smallest {c}", "the tiniest {c}", "the {c} that looks smallest")}
RELATION = {
    "left of": ("the {c} to the left of the {a}", "the {c} left of the {a}", "the {c} to the {a}'s left"),
    "right of": ("the {c} to the right of the {a}", "the {c} right of the {a}", "the {c} to the {a}'s right"),
    "above": ("the {c} above the {a}", "the {c} over the {a}", "the {c} higher up than the {a}"),
    "below": ("the {c} below the {a}", "the {c} beneath the {a}", "the {c} under the {a}"),
    "next to": ("the {c} next to the {a}", "the {c} beside the {a}", "the {c} close to the {a}"),
}
ALL_OF = ("all the {cs}", "every {c} in the picture", "each of the {cs}", "the {cs}, all of them")
PLURAL = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "pairs of skis",
          "broccoli": "pieces of broccoli", "scissors": "pairs of scissors"}


def _plural(category: str) -> str:
    if category in PLURAL:
        return PLURAL[category]
    return category + ("es" if category.endswith(("s", "sh", "ch", "x")) else "s")


def _text(spec: dict, group: bool, image: InstanceImage, rng: random.Random) -> str:
    """One phrasing of a spec, drawn from several."""
    kind = spec["type"]
    if "use" in spec:
        return _use_text(USES[spec["use"]], group, image, rng)
    c = spec["category"]
    if kind == "category" and group:
        return rng.choice(ALL_OF).format(c=c, cs=_plural(c))
    if kind in ("category", "absent"):
        return rng.choice(CATEGORY).format(c=c)
    if kind == "position":
        return rng.choice(POSITION[spec["side"]]).format(c=c)
    if kind == "ordinal":
        return rng.choice(ORDINAL).format(nth=NTH[spec["n"]], c=c, side=spec["from"])
    if kind == "size":
        return rng.choice(SIZE[spec["extreme"]]).format(c=c)
    return rng.choice(RELATION[spec["relation"]]).format(c=c, a=spec["anchor"])


def _use_text(use: Use, group: bool, image: InstanceImage, rng: random.Random) -> str:
    if group:
        return rng.choice(use.ask_all)
    present = {i.category for i in image.instances}
    return rng.choice(list(use.ask) + [text for text, needs in use.context if needs in present])


# --- generation ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Proposal:
    kind: str
    spec: dict


def _proposals(image: InstanceImage, target: Instance, config: QueryConfig) -> list[_Proposal]:
    """Every query that might single out `target`; `resolve` decides which do. Anchors of relations
    are the only one of their category and big enough to be targets themselves (easy to see)."""
    c = target.category
    same = [i for i in image.instances if i.category == c]
    out = [_Proposal("referring", {"type": "category", "category": c})]
    if len(same) >= 2:
        out += [_Proposal("referring", {"type": "position", "category": c, "side": s}) for s in SIDES]
        out += [_Proposal("referring", {"type": "size", "category": c, "extreme": e}) for e in ("largest", "smallest")]
    if len(same) >= 3:
        out += [_Proposal("referring", {"type": "ordinal", "category": c, "n": n, "from": side})
                for side, n in _ordinal_guesses(image, same, target)]
    counts: dict[str, int] = {}
    for inst in image.instances:
        counts[inst.category] = counts.get(inst.category, 0) + 1
    anchors = [i for i in image.instances
               if i.category != c and counts[i.category] == 1 and _is_target(i, image, config)]
    out += [_Proposal("referring", {"type": "relation", "category": c, "relation": r, "anchor": a.category})
            for a in anchors for r in RELATIONS]
    out += [_Proposal("reasoning", {"type": "affordance", "use": u.name, "group": False}) for u in uses_of(c)]
    return out


def _ordinal_guesses(image: InstanceImage, same: list[Instance], target: Instance) -> list[tuple[str, int]]:
    """(side, n) for the target's place in centre order from each side, when it is worth counting to."""
    guesses = []
    for side in SIDES:
        axis = 0 if side in ("left", "right") else 1
        ordered = sorted(same, key=lambda i: _centre(i, axis), reverse=side in ("right", "bottom"))
        n = ordered.index(target) + 1
        if 2 <= n <= min(MAX_ORDINAL, len(same) - 1):  # the first or last is a position query
            guesses.append((side, n))
    return guesses


def _is_target(inst: Instance, image: InstanceImage, config: QueryConfig) -> bool:
    return not inst.crowd and inst.area >= config.min_target_fraction * image.width * image.height


def _pick(valid: list[_Proposal], config: QueryConfig, rng: random.Random) -> list[_Proposal]:
    """Up to per_target queries for one target: a reasoning one at reasoning_share (always when it
    is the only kind), then referring ones of spec types not used yet, then whatever is left."""
    reasoning = [p for p in valid if p.kind == "reasoning"]
    referring = [p for p in valid if p.kind == "referring"]
    picks: list[_Proposal] = []
    if reasoning and (not referring or rng.random() < config.reasoning_share):
        picks.append(rng.choice(reasoning))
    types = sorted({p.spec["type"] for p in referring})
    rng.shuffle(types)
    for t in types[: config.per_target - len(picks)]:
        picks.append(rng.choice([p for p in referring if p.spec["type"] == t]))
    rest = [p for p in valid if p not in picks]
    rng.shuffle(rest)
    return picks + rest[: config.per_target - len(picks)]


def _target_queries(image: InstanceImage, target: Instance, config: QueryConfig,
                    rng: random.Random) -> list[GeneratedQuery]:
    valid = [p for p in _proposals(image, target, config) if resolve(p.spec, image) == {target.index}]
    return [GeneratedQuery(_text(p.spec, False, image, rng), p.kind, (target.index,), p.spec)
            for p in _pick(valid, config, rng)]


def _group_queries(image: InstanceImage, config: QueryConfig, rng: random.Random) -> list[GeneratedQuery]:
    """All the members of a category, or everything that answers a use, as one union target."""
    out = []
    specs = [{"type": "category", "category": c} for c in dict.fromkeys(i.category for i in image.instances)]
    specs += [{"type": "affordance", "use": u.name, "group": True} for u in USES.values()]
    for spec in specs:
        names = {spec["category"]} if "category" in spec else USES[spec["use"]].core
        targets = tuple(i.index for i in image.instances if i.category in names and _is_target(i, image, config))
        if len(targets) >= 2 and resolve(spec, image) == set(targets) and rng.random() < config.group_share:
            out.append(GeneratedQuery(_text(spec, True, image, rng), "group", targets, spec))
    return out


def _absent_candidates(image: InstanceImage) -> list[dict]:
    """Categories and uses with nothing in the image, nor anything a person could mistake for them:
    no category sharing a use with an absent category is present (no "the truck" beside a car)."""
    present = {i.category for i in image.instances}
    related = set(present)
    for use in USES.values():
        if use.categories & present:
            related |= use.categories
    specs = [{"type": "absent", "category": c} for c in COCO80 if c not in related]
    specs += [{"type": "absent", "use": u.name} for u in USES.values() if not u.categories & present]
    return [s for s in specs if not resolve(s, image)]


def _absent_queries(image: InstanceImage, others: int, config: QueryConfig,
                    rng: random.Random) -> list[GeneratedQuery]:
    """Enough absent queries that they make absent_rate of the image's queries in expectation."""
    expected = others * config.absent_rate / (1.0 - config.absent_rate)
    count = int(expected) + (rng.random() < expected - int(expected))
    candidates = _absent_candidates(image) if count else []
    return [GeneratedQuery(_text(spec, False, image, rng), "absent", (), spec)
            for spec in rng.sample(candidates, min(count, len(candidates)))]


def generate_queries(image: InstanceImage, rng: random.Random,
                     config: QueryConfig = QueryConfig()) -> list[GeneratedQuery]:
    """Queries for one image: per target instance (instance order) up to per_target referring or
    reasoning queries, then group queries, then absent ones; each resolves to exactly its targets.
    The same rng state gives the same list."""
    found: list[GeneratedQuery] = []
    for inst in image.instances:
        if _is_target(inst, image, config):
            found += _target_queries(image, inst, config, rng)
    found += _group_queries(image, config, rng)
    if config.max_per_image is not None and len(found) > config.max_per_image:
        keep = sorted(rng.sample(range(len(found)), config.max_per_image))
        found = [found[k] for k in keep]
    return found + _absent_queries(image, len(found), config, rng)


def neighbour(image: InstanceImage, targets: tuple[int, ...],
              min_target_fraction: float = QueryConfig.min_target_fraction) -> int | None:
    """The instance a policy would most plausibly pick by mistake: the nearest (by centre) non-crowd
    instance of a target's category, else the one whose box overlaps a target's box the most (touching
    counts); never a target, a crowd or one below the min size. None when there is none."""
    if not targets:
        return None
    chosen = [image.instances[t] for t in targets]
    min_area = min_target_fraction * image.width * image.height
    others = [i for i in image.instances if i.index not in targets and not i.crowd and i.area >= min_area]
    same = [i for i in others if i.category in {t.category for t in chosen}]
    if same:
        return min(same, key=lambda i: min(math.dist((_centre(i, 0), _centre(i, 1)), (_centre(t, 0), _centre(t, 1)))
                                           for t in chosen)).index
    touching = [i for i in others if any(_gap(i, t) == 0 for t in chosen)]
    if not touching:
        return None
    return max(touching, key=lambda i: max(max(0.0, _overlap(i, t, 0)) * max(0.0, _overlap(i, t, 1))
                                           for t in chosen)).index
