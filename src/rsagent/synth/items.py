"""The work list of a synthesis run: one item per (image, query, opening), listed deterministically
from the dataset, the seed and the options, so that every worker lists the same items itself.

Sources with only class labels (COCO instances without a queries file, YOLO-seg) get queries written
from their instance lists (synth.queries); sources with their own queries (ReasonSeg, RefCOCO/+/g,
COCO with a queries file, manifests) keep them. Items are grouped by image (a worker's segmenter
encodes each image once for all its queries) and images are shuffled by the seed, so `num` takes a
varied subset.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.core.mask import GroundTruth
from rsagent.data import Sample
from rsagent.data.instances import INSTANCE_SOURCES, InstanceImage, load_instance_images
from rsagent.eval.run import DatasetSpec
from rsagent.synth.expert import DEFAULT_MIX, OPENINGS, Opening, draw_opening
from rsagent.synth.queries import GeneratedQuery, QueryConfig, generate_queries, neighbour


@dataclass(frozen=True)
class SynthItem:
    sample_id: str  # the item's id: results, trajectories and exports are keyed by it
    source: str  # dataset name
    source_id: str  # image id (instance sources) or the dataset's sample id
    image_path: str
    query: str
    kind: str  # referring | reasoning | group | absent | teacher | dataset
    targets: tuple[int, ...] = ()  # instance indices (instance sources)
    opening: Opening = field(default_factory=Opening)
    spec: dict = field(default_factory=dict, compare=False)  # the query's structured meaning


def rng_for(seed: int, *key: object) -> random.Random:
    """A generator for one decision, independent of every other: the same seed and key give the same draws."""
    return random.Random(zlib.crc32(":".join(map(str, (seed, *key))).encode()))


def is_instance_source(dataset: DatasetSpec) -> bool:
    """True when synthesis writes the queries itself (no queries of the dataset's own)."""
    if dataset.name not in INSTANCE_SOURCES:
        return False
    if dataset.name == "coco":
        root = Path(dataset.root)
        default = root / f"queries_{dataset.split or 'val2017'}.jsonl"
        return dataset.queries is None and not default.is_file()
    return True


@dataclass
class Listing:
    """The items, and what their ground truth is drawn from (by source id)."""

    items: list[SynthItem]
    images: dict[str, InstanceImage] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)

    def ground_truth(self, item: SynthItem) -> Callable[[int, int], GroundTruth]:
        """`load_gt(height, width)` for an item; crowds of the target categories are ignore pixels."""
        if item.source_id in self.samples:
            return self.samples[item.source_id].load_gt
        image = self.images[item.source_id]
        return lambda h, w: _instance_gt(image, item.targets, h, w)


def _instance_gt(image: InstanceImage, targets: tuple[int, ...], height: int, width: int) -> GroundTruth:
    if (height, width) != (image.height, image.width):
        raise RsagentError(f"{image.image_path}: the image is {width}x{height} but its annotations give "
                           f"{image.width}x{image.height}")
    mask = image.union(targets)
    cats = {image.instances[i].category for i in targets}
    crowds = [inst.index for inst in image.instances if inst.crowd and inst.category in cats]
    ignore = image.union(crowds) & ~mask if crowds else None
    return GroundTruth(mask, ignore if ignore is not None and ignore.any() else None)


def _openings(seed: int, item_key: str, mix: dict[str, float], image: InstanceImage | None,
              targets: tuple[int, ...], variants: int) -> list[Opening]:
    """Up to `variants` openings of different kinds for one query. A wrong region's box is placed by
    the worker once the ground truth is drawn (sources with their own queries have no instance list to
    take a neighbour from)."""
    if image is not None and not targets:
        return [Opening("none")]  # an absent target: the answer is an empty submit, one way only
    rng = rng_for(seed, "opening", item_key)
    other = neighbour(image, targets) if image is not None else None
    out: list[Opening] = []
    left = dict(mix)
    while len(out) < variants and any(w > 0 for w in left.values()):
        kind = draw_opening(rng, left, other is not None)
        for used in (kind, "wrong_neighbour") if kind == "wrong_region" else (kind,):
            left.pop(used, None)
        if kind == "wrong_neighbour":
            inst = image.instances[other]  # type: ignore[union-attr]
            out.append(Opening(kind, inst.box, inst.category))
        else:
            out.append(Opening(kind))
    return out


def _variant_id(base: str, j: int) -> str:
    return base if j == 0 else f"{base}-v{j}"


def list_items(dataset: DatasetSpec, seed: int = 0, num: int | None = None, queries: QueryConfig = QueryConfig(),
               mix: dict[str, float] | None = None,
               extra_queries: dict[str, list[GeneratedQuery]] | None = None, variants: int = 1) -> Listing:
    """Every item of a synthesis run, in run order. Each query is run `variants` times with openings
    of different kinds (item ids `<id>`, `<id>-v1`, ...). `extra_queries` (by image id: a teacher's
    verified queries) are added to the generated ones."""
    if variants < 1:
        raise RsagentError(f"--variants must be at least 1, got {variants}")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(OPENINGS))
    if unknown or not any(w > 0 for w in mix.values()):
        raise RsagentError(f"opening mix {mix}: weights must be positive for some of {', '.join(OPENINGS)}")
    if num is not None and num < 1:
        raise RsagentError(f"--num must be at least 1, got {num}")
    listing = Listing([])
    if is_instance_source(dataset):
        images = load_instance_images(dataset.name, dataset.root, dataset.split, annotations=dataset.annotations)
        rng_for(seed, "images").shuffle(images)
        for image in images:
            listing.images[image.image_id] = image
            found = generate_queries(image, rng_for(seed, "queries", image.image_id), queries)
            found += (extra_queries or {}).get(image.image_id, [])
            for k, q in enumerate(found):
                base = f"{dataset.name}-{image.image_id}-q{k}"
                for j, opening in enumerate(_openings(seed, base, mix, image, q.targets, variants)):
                    listing.items.append(SynthItem(_variant_id(base, j), dataset.name, image.image_id,
                                                   str(image.image_path), q.text, q.kind, tuple(q.targets), opening,
                                                   q.spec))
            if num is not None and len(listing.items) >= num:
                break
    else:
        samples = dataset.load()
        groups: dict[str, list[Sample]] = {}
        for s in samples:
            groups.setdefault(str(s.image_path), []).append(s)
        order = list(groups)
        rng_for(seed, "images").shuffle(order)
        for path in order:
            for s in groups[path]:
                listing.samples[s.sample_id] = s
                for j, opening in enumerate(_openings(seed, s.sample_id, mix, None, (), variants)):
                    listing.items.append(SynthItem(_variant_id(s.sample_id, j), dataset.name, s.sample_id, path,
                                                   s.query, "dataset", (), opening))
            if num is not None and len(listing.items) >= num:
                break
    if num is not None:
        listing.items = listing.items[:num]
    ids = Counter(it.sample_id for it in listing.items)
    clash = sorted(k for k, c in ids.items() if c > 1)
    if clash:
        raise RsagentError(f"{dataset.root}: item ids occur twice (e.g. {', '.join(clash[:3])}): a sample id "
                           "ends like a variant's (-v1); run with --variants 1")
    if not listing.items:
        raise RsagentError(f"{dataset.root}: no synthesis items (no query could be written for any image)")
    return listing
