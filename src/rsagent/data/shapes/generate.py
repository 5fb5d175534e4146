"""Samples of the shapes domain by split and index: a scene, a query of a chosen kind, its target set.

Sample `i` of split `s` depends only on (s, i) and the config, so every split is an unbounded,
reproducible sequence and any prefix of it is the same. `test-novel` holds what training never
shows: colour-kind pairs absent from every train/val/test scene and query, and the relation "below".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rsagent.data.shapes import queries as Q
from rsagent.data.shapes.scene import COLOURS, KINDS, ROUND, Scene, SceneConfig, _Retry, sample_scene

SPLITS = {"train": 1, "val": 2, "test": 3, "test-novel": 4}
DEFAULT_SIZES = {"train": 5000, "val": 500, "test": 1000, "test-novel": 500}  # listed when no count is given
# one held-out kind per colour, none twice: novel colour-kind pairs for test-novel
HELD_OUT_PAIRS = frozenset({("red", "star"), ("orange", "ring"), ("yellow", "cross"), ("green", "triangle"),
                            ("blue", "hexagon"), ("purple", "circle"), ("pink", "square"), ("brown", "diamond")})
HELD_OUT_RELATIONS = ("below",)
DEFAULT_MIX = {"attribute": 0.2, "position": 0.1, "ordinal": 0.1, "relation": 0.15, "reasoning": 0.2,
               "multi": 0.15, "absent": 0.1}
TOUCH_PREFERENCE = 3.0  # extra weight of a query whose target touches a same-coloured shape
VERSION = 2  # bump when the same (split, index, config) would draw something else (2: absent queries in
# every attribute form, 2026-11-29 (u); the other kinds draw as in 1)


@dataclass(frozen=True)
class ShapesConfig:
    scene: SceneConfig = SceneConfig()
    mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_MIX.items())  # query kind -> weight

    def to_dict(self) -> dict:
        return {"version": VERSION, "scene": self.scene.to_dict(), "mix": dict(self.mix)}

    @classmethod
    def from_dict(cls, d: dict) -> ShapesConfig:
        s = dict(d["scene"])
        s["noise"] = tuple(s["noise"])
        return cls(SceneConfig(**s), tuple(d["mix"].items()))


@dataclass
class ShapesSample:
    sample_id: str
    split: str
    index: int
    scene: Scene
    program: dict
    query: str
    kind: str  # one of queries.QUERY_KINDS
    targets: list[int]  # shape ids; empty = absent target
    novel: list[str] = field(default_factory=list)  # test-novel: what is held out in it

    @property
    def mask(self) -> np.ndarray:
        out = np.zeros((self.scene.size, self.scene.size), bool)
        for i in self.targets:
            out |= self.scene.shapes[i].mask
        return out

    def record(self) -> dict:
        """What the manifest line keeps besides paths."""
        program = {k: list(v) if isinstance(v, tuple) else v for k, v in self.program.items()}
        return {"sample_id": self.sample_id, "query": self.query, "split": self.split, "kind": self.kind,
                "index": self.index, "targets": self.targets, "program": program, "novel": self.novel}


def rng_for(split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; splits: {', '.join(SPLITS)}")
    return np.random.default_rng([0x5A4E5, SPLITS[split], index])


def novelty(program: dict, scene: Scene, targets: list[int]) -> list[str]:
    """The held-out combinations a sample shows: pairs named in its text or among its targets, held-out relations."""
    found = set()
    for desc in Q.mentions(program):
        if (desc[1], desc[2]) in HELD_OUT_PAIRS:
            found.add(f"pair:{desc[1]} {desc[2]}")
    for i in targets:
        s = scene.shapes[i]
        if (s.colour, s.kind) in HELD_OUT_PAIRS:
            found.add(f"pair:{s.colour} {s.kind}")
    if program.get("rel") in HELD_OUT_RELATIONS:
        found.add(f"relation:{program['rel']}")
    return sorted(found)


def _bleeds(scene: Scene, targets: list[int]) -> bool:
    """Some target touches a same-coloured shape that is not a target."""
    return any(scene.touches(i, j) and scene.shapes[i].colour == scene.shapes[j].colour
               for i in targets for j in range(len(scene.shapes)) if j != i and j not in targets)


def _constraints(rng: np.random.Generator, op: str, config: SceneConfig) -> tuple[list[str] | None, list[str] | None]:
    """Fixed kinds or colours that make a reasoning query possible (most random scenes have none)."""
    n = int(rng.integers(max(3, config.min_shapes), config.max_shapes + 1))
    others = [k for k in KINDS if k not in ROUND]
    if op == "roll":
        kinds = [str(rng.choice(ROUND))] + [str(rng.choice(others)) for _ in range(n - 1)]
        return list(rng.permutation(kinds)), None
    if op == "hole":
        kinds = ["ring"] + [str(rng.choice([k for k in KINDS if k != "ring"])) for _ in range(n - 1)]
        return list(rng.permutation(kinds)), None
    if op == "odd":
        common, odd = rng.choice(KINDS, 2, replace=False)
        return list(rng.permutation([str(common)] * (n - 1) + [str(odd)])), None
    if op == "unique_colour":
        palette = list(rng.permutation(list(COLOURS)))
        lone, rest = palette[0], palette[1:1 + max(1, (n - 1) // 2)]
        colours = [lone] + [rest[i % len(rest)] for i in range(n - 1)]
        if n - 1 >= 2 and len(rest) * 2 > n - 1:
            rest = rest[: (n - 1) // 2]
            colours = [lone] + [rest[i % len(rest)] for i in range(n - 1)]
        return None, [str(c) for c in rng.permutation(colours)]
    return None, None


def _draw_scene(rng: np.random.Generator, config: SceneConfig, kind: str, banned: frozenset) -> tuple[Scene, str | None]:
    op = None
    kinds = colours = None
    if kind == "reasoning":
        op = str(rng.choice(list(Q.REASONING)))
        kinds, colours = _constraints(rng, op, config)
        if colours is not None:
            kinds = [str(rng.choice([k for k in KINDS if (c, k) not in banned])) for c in colours]
        elif kinds is not None:
            colours = [str(rng.choice([c for c in COLOURS if (c, k) not in banned])) for k in kinds]
    try:
        return sample_scene(rng, config, kinds=kinds, colours=colours, banned=banned), op
    except _Retry:
        return sample_scene(rng, config, banned=banned), None


def generate(split: str, index: int, config: ShapesConfig = ShapesConfig()) -> ShapesSample:
    """Sample `index` of `split`."""
    rng = rng_for(split, index)
    novel_split = split == "test-novel"
    banned = frozenset() if novel_split else HELD_OUT_PAIRS
    kinds_, weights = zip(*config.mix)
    p = np.asarray(weights, float) / sum(weights)
    kind = str(rng.choice(kinds_, p=p))
    for _attempt in range(200):
        scene, op = _draw_scene(rng, config.scene, kind, banned)
        programs = Q.candidates(kind, scene)
        if op is not None and any(pr["op"] == op for pr in programs):
            programs = [pr for pr in programs if pr["op"] == op]  # the query the scene was built for
        keep = []
        for program in programs:
            targets = Q.resolve(program, scene)
            novel = novelty(program, scene, targets)
            if novel_split != bool(novel):
                continue
            keep.append((program, targets, novel))
        if keep:
            if kind == "absent":  # in the attribute queries' forms, as often: the form does not give it away
                weights = np.asarray(Q.absent_weights([pr for pr, _, _ in keep], scene))
            else:  # prefer targets with a same-coloured shape touching them: a box alone bleeds into it
                weights = np.array([1.0 + TOUCH_PREFERENCE * _bleeds(scene, t) for _, t, _ in keep])
            program, targets, novel = keep[int(rng.choice(len(keep), p=weights / weights.sum()))]
            return ShapesSample(f"{split}-{index:06d}", split, index, scene, program, Q.text(program), kind,
                                targets, novel)
    raise RuntimeError(f"no {kind} query found for {split} sample {index} in 200 scenes")
