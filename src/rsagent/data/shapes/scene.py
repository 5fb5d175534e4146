"""Procedural scenes of coloured shapes with their full scene graph and exact pixel masks.

A scene is drawn from a numpy Generator alone, so a seed gives the same pixels everywhere. Shapes are
placed back to front (z = list index); the visible mask of a shape is its own raster minus everything
drawn later, and those masks are the ground truth. Same-coloured shapes are deliberately placed
touching one another, so that a box around one bleeds into its neighbour and a refinement is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

KINDS = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring")
PLURALS = {"cross": "crosses"}  # everything else takes an "s"
CORNERS = {"circle": 0, "ring": 0, "triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6,
           "star": 10, "cross": 12}  # vertices of the outline
ROUND = ("circle", "ring")  # the shapes that could roll
COLOURS = {"red": (215, 40, 40), "orange": (245, 135, 20), "yellow": (235, 210, 35), "green": (40, 160, 60),
           "blue": (40, 80, 215), "purple": (135, 55, 185), "pink": (245, 120, 185), "brown": (125, 75, 35)}
# circumradius as a fraction of the image side, per size word
SIZES = {"tiny": (0.05, 0.07), "small": (0.08, 0.11), "medium": (0.12, 0.16), "large": (0.17, 0.23)}
SIZE_WEIGHTS = (0.2, 0.3, 0.3, 0.2)
MIN_VISIBLE = 0.5  # every shape keeps at least this share of its own raster visible
MIN_PIXELS = 12


def plural(kind: str) -> str:
    return PLURALS.get(kind, kind + "s")


@dataclass
class Shape:
    id: int  # = z order (0 is at the back)
    kind: str
    colour: str
    size: str
    radius: float  # circumradius in pixels
    cx: float
    cy: float
    rotation: float  # degrees
    full: np.ndarray = field(repr=False)  # bool raster of the whole shape
    mask: np.ndarray | None = field(default=None, repr=False)  # visible pixels (set by the scene)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Visible pixels' bounding box [x0, y0, x1, y1) (exclusive ends); kept for the mask it was computed
        from, since query generation asks for it tens of thousands of times a scene."""
        cached = self.__dict__.get("_box")
        if cached is None or cached[0] is not self.mask:
            ys, xs = np.nonzero(self.mask)
            cached = (self.mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
            self.__dict__["_box"] = cached
        return cached[1]

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the visible box: what left/right/top/bottom orderings compare."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass
class Scene:
    size: int
    shapes: list[Shape]
    background: dict
    image: np.ndarray = field(repr=False)
    occludes: list[tuple[int, int]] = field(default_factory=list)  # (front id, hidden id): front covers part of hidden
    touching: list[tuple[int, int]] = field(default_factory=list)  # (i, j), i < j: visible masks 4-adjacent

    def touches(self, i: int, j: int) -> bool:
        return (min(i, j), max(i, j)) in self._touch_set

    @property
    def _touch_set(self) -> set[tuple[int, int]]:
        return set(self.touching)

    def graph(self) -> dict:
        """The scene graph as JSON-ready data (masks as COCO RLE)."""
        from rsagent.core.mask import encode_rle

        return {"size": self.size, "background": self.background,
                "shapes": [{"id": s.id, "kind": s.kind, "colour": s.colour, "size": s.size,
                            "radius": round(s.radius, 3), "centre": [round(s.cx, 3), round(s.cy, 3)],
                            "rotation": round(s.rotation, 2), "z": s.id, "box": list(s.box),
                            "area": int(s.mask.sum()), "full_area": int(s.full.sum()),
                            "mask": encode_rle(s.mask)} for s in self.shapes],
                "occludes": [list(p) for p in self.occludes], "touching": [list(p) for p in self.touching]}


# --- rasterising one shape ----------------------------------------------------------------------
_SHIFT = 4  # sub-pixel bits for cv2 drawing


def _regular(n: int, r: float, phase: float) -> np.ndarray:
    a = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def outline(kind: str, r: float, rotation: float) -> np.ndarray | None:
    """Polygon vertices around (0, 0) in pixels (y down); None for the round kinds."""
    top = -np.pi / 2
    if kind == "triangle":
        pts = _regular(3, r, top)
    elif kind == "square":
        pts = _regular(4, r, np.pi / 4)
    elif kind == "diamond":
        pts = _regular(4, r, top) * np.array([0.62, 1.0])
    elif kind == "pentagon":
        pts = _regular(5, r, top)
    elif kind == "hexagon":
        pts = _regular(6, r, 0.0)
    elif kind == "star":
        outer, inner = _regular(5, r, top), _regular(5, 0.42 * r, top + np.pi / 5)
        pts = np.stack([outer, inner], 1).reshape(-1, 2)
    elif kind == "cross":
        a = 0.34 * r / np.sqrt(1 + 0.34 ** 2)  # arm half-width; the arm tips' corners lie on the circle
        b = np.sqrt(r * r - a * a)
        pts = np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a],
                        [-b, -a], [-a, -a]])
    else:
        return None
    t = np.deg2rad(rotation)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return pts @ rot.T


def rasterise(kind: str, r: float, cx: float, cy: float, rotation: float, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    scale = 1 << _SHIFT
    centre = (int(round(cx * scale)), int(round(cy * scale)))
    if kind in ROUND:
        cv2.circle(canvas, centre, int(round(r * scale)), 1, -1, cv2.LINE_8, _SHIFT)
        if kind == "ring":
            cv2.circle(canvas, centre, int(round(0.5 * r * scale)), 0, -1, cv2.LINE_8, _SHIFT)
    else:
        pts = outline(kind, r, rotation) + np.array([cx, cy])
        cv2.fillPoly(canvas, [np.round(pts * scale).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    return canvas.astype(bool)


# --- sampling a scene ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneConfig:
    size: int = 112  # pixels a side (112..224); multiples of 28 keep Qwen2.5-VL from resizing
    min_shapes: int = 2
    max_shapes: int = 8
    touch_rate: float = 0.7  # chance that a scene gets a same-coloured shape touching another
    overlap_rate: float = 0.35  # chance that a shape is placed overlapping an earlier one
    noise: tuple[float, float] = (3.0, 12.0)  # per-pixel Gaussian noise std range
    camouflage_rate: float = 0.7  # chance that the background texture takes a washed-out shape colour

    def to_dict(self) -> dict:
        return {"size": self.size, "min_shapes": self.min_shapes, "max_shapes": self.max_shapes,
                "touch_rate": self.touch_rate, "overlap_rate": self.overlap_rate, "noise": list(self.noise),
                "camouflage_rate": self.camouflage_rate}


def _size_word(rng: np.random.Generator) -> str:
    return str(rng.choice(list(SIZES), p=SIZE_WEIGHTS))


def _radius(rng: np.random.Generator, word: str, side: int) -> float:
    lo, hi = SIZES[word]
    return float(rng.uniform(lo, hi) * side)


def _visible_ok(fulls: list[np.ndarray]) -> bool:
    """Every shape keeps enough of itself visible under the ones drawn after it."""
    cover = np.zeros_like(fulls[0])
    for full in reversed(fulls):
        own = int(full.sum())
        vis = int((full & ~cover).sum())
        if vis < MIN_PIXELS or vis < MIN_VISIBLE * own:
            return False
        cover |= full
    return True


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig(), *,
                 kinds: list[str] | None = None, colours: list[str] | None = None,
                 banned: frozenset[tuple[str, str]] = frozenset()) -> Scene:
    """A random scene. `kinds` / `colours` fix the shapes' attributes (same length; the count follows);
    `banned` (colour, kind) pairs never occur."""
    side = config.size
    n = len(kinds) if kinds is not None else int(rng.integers(config.min_shapes, config.max_shapes + 1))
    shapes: list[Shape] = []
    fulls: list[np.ndarray] = []
    touch_at = int(rng.integers(1, n)) if n > 1 and rng.random() < config.touch_rate else -1
    for index in range(n):
        for _attempt in range(60):
            kind = kinds[index] if kinds is not None else str(rng.choice(KINDS))
            colour = colours[index] if colours is not None else str(rng.choice(list(COLOURS)))
            if index == touch_at and colours is None and shapes:
                colour = shapes[int(rng.integers(len(shapes)))].colour
            if (colour, kind) in banned:
                if kinds is not None and colours is not None:
                    raise ValueError(f"asked for a banned pair: {colour} {kind}")
                continue
            word = _size_word(rng)
            r = _radius(rng, word, side)
            rotation = float(rng.uniform(-20, 20)) if kind in ("square", "diamond") else float(rng.uniform(0, 360))
            if index == touch_at:
                anchor = next((s for s in reversed(shapes) if s.colour == colour), shapes[-1])
                placed = _touching(rng, anchor, kind, r, rotation, side)
                if placed is None:
                    continue
                cx, cy, full = placed
            else:
                if shapes and rng.random() < config.overlap_rate:  # near an earlier shape, likely overlapping
                    other = shapes[int(rng.integers(len(shapes)))]
                    angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0) * (other.radius + r)
                    cx, cy = other.cx + dist * np.cos(angle), other.cy + dist * np.sin(angle)
                else:
                    cx, cy = rng.uniform(0, side), rng.uniform(0, side)
                cx, cy = float(np.clip(cx, r, side - r)), float(np.clip(cy, r, side - r))
                full = rasterise(kind, r, cx, cy, rotation, side)
            if full.sum() < MIN_PIXELS or not _visible_ok(fulls + [full]):
                continue
            shapes.append(Shape(index, kind, colour, word, r, cx, cy, rotation, full))
            fulls.append(full)
            break
        else:
            if kinds is not None:  # fixed attributes must all appear: start over with a smaller footprint
                raise _Retry()
            break
    return _finish(rng, shapes, config)


class _Retry(Exception):
    """A constrained scene could not be placed; the caller draws again."""


def _touching(rng: np.random.Generator, anchor: Shape, kind: str, r: float, rotation: float,
              side: int) -> tuple[float, float, np.ndarray] | None:
    """A placement of a new shape whose raster touches `anchor`'s without covering much of it."""
    angle = rng.uniform(0, 2 * np.pi)
    ux, uy = np.cos(angle), np.sin(angle)
    ring = cv2.dilate(anchor.full.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~anchor.full
    for dist in np.arange(anchor.radius + r + 1, 0.5 * (anchor.radius + r), -1.0):
        cx, cy = anchor.cx + dist * ux, anchor.cy + dist * uy
        if not (r <= cx <= side - r and r <= cy <= side - r):
            return None
        full = rasterise(kind, r, cx, cy, rotation, side)
        if (full & (ring | anchor.full)).any():
            return cx, cy, full
    return None


def _finish(rng: np.random.Generator, shapes: list[Shape], config: SceneConfig) -> Scene:
    side = config.size
    cover = np.zeros((side, side), bool)
    for s in reversed(shapes):
        s.mask = s.full & ~cover
        cover |= s.full
    occludes = [(b.id, a.id) for a in shapes for b in shapes if b.id > a.id and (a.full & b.full).any()]
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    grown = [cv2.dilate(s.mask.astype(np.uint8), cross).astype(bool) for s in shapes]
    touching = [(a.id, b.id) for a in shapes for b in shapes if a.id < b.id and (grown[a.id] & b.mask).any()]
    image, background = _paint(rng, shapes, side, config)
    return Scene(side, shapes, background, image, occludes, touching)


def _paint(rng: np.random.Generator, shapes: list[Shape], side: int, config: SceneConfig) -> tuple[np.ndarray, dict]:
    """Textured, desaturated background; shapes filled in their colour with a little per-shape shading."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = rng.uniform(60, 200)
    tint = rng.uniform(-12, 12, 3)
    texture = str(rng.choice(["gradient", "stripes", "checker", "blotches", "plain"]))
    amp = rng.uniform(8, 28)
    if texture == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        field_ = (np.cos(a) * xx + np.sin(a) * yy) * 2 - 1
    elif texture == "stripes":
        a, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
        field_ = np.sin(2 * np.pi * freq * (np.cos(a) * xx + np.sin(a) * yy))
    elif texture == "checker":
        k = int(rng.integers(3, 9))
        field_ = ((np.floor(xx * k) + np.floor(yy * k)) % 2) * 2 - 1
    elif texture == "blotches":
        coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
        field_ = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
        field_ /= max(1e-6, float(np.abs(field_).max()))
    else:
        field_ = np.zeros_like(xx)
    img = np.clip(base + amp * field_, 0, 255)[..., None] + tint[None, None, :]
    camouflage = None
    if texture != "plain" and rng.random() < config.camouflage_rate:
        # the texture's second tone is a washed-out palette colour: boxes pick up look-alike background
        camouflage = str(rng.choice(list(COLOURS)))
        mix = rng.uniform(0.55, 0.85)
        tone = mix * np.array(COLOURS[camouflage], np.float32) + (1 - mix) * (base + tint)
        weight = np.clip((field_ + 1) / 2, 0, 1)[..., None]
        img = img * (1 - weight) + tone[None, None, :] * weight
    for s in shapes:
        colour = np.array(COLOURS[s.colour], np.float32) + rng.uniform(-12, 12, 3)
        shade = 1 + 0.12 * ((xx - s.cx / side) * np.cos(np.deg2rad(s.rotation)) + (yy - s.cy / side))[..., None]
        img = np.where(s.full[..., None], colour[None, None, :] * shade, img)
    sigma = float(rng.uniform(*config.noise))
    img = img + rng.normal(0, sigma, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), {"texture": texture, "base": round(float(base), 1),
                                                                "amplitude": round(float(amp), 1), "camouflage": camouflage,
                                                                "noise": round(sigma, 2)}
