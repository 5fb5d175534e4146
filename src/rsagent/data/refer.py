"""RefCOCO, RefCOCO+ and RefCOCOg in LISA's refer_seg layout.

Layout (ROOT is LISA's `refer_seg/`):

    ROOT/images/mscoco/images/train2014/<file_name>     images, named as in instances.json
    ROOT/refcoco/refs(unc).p    ROOT/refcoco/instances.json
    ROOT/refcoco+/refs(unc).p   ROOT/refcoco+/instances.json
    ROOT/refcocog/refs(umd).p   ROOT/refcocog/instances.json

The refs pickle is the `refer` API's list of refs (`ref_id`, `ann_id`, `image_id`, `split`,
`sentences` [{`sent_id`, `sent`, ...}], ...). One sample per sentence of every ref of the split, in
pickle order then sentence order; sample id `<ref_id>-<sent_id>`, query = the sentence's `sent`; the
target is the referred annotation (polygons through pycocotools, or an RLE), its parts merged; no
ignore pixels. See docs/datasets.md.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from rsagent.core.errors import DatasetError
from rsagent.data.base import Sample
from rsagent.data.coco import AnnotationsGroundTruth, read_instances

__all__ = ["REFS_FILES", "load_refer", "load_refs"]

REFS_FILES = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}
IMAGES_SUBDIR = Path("images") / "mscoco" / "images" / "train2014"

# What a refs pickle may name besides plain containers: protocol 2 writes Python 3 bytes through
# _codecs.encode, and numpy scalars (ids made with numpy) through multiarray.scalar and dtype.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"), ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
    ("__builtin__", "frozenset"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _RefsUnpickler(pickle.Unpickler):
    """Loads data only: a pickle that names any other class or function is refused, not run."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a refs pickle holds plain data only)")


def load_refs(path: Path) -> list[dict]:
    """The refs list of a `refs(*).p` pickle (Python 2 or 3, any protocol), checked to be a list of dicts.

    Python 2 `str` objects are decoded as latin-1 (identical to ASCII wherever LISA's plain
    `pickle.load` succeeds; `unicode` objects and everything Python 3 wrote are unaffected).
    """
    try:
        with open(path, "rb") as f:
            refs = _RefsUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such refs pickle") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, ValueError, ...: a bad file
        raise DatasetError(f"{path}: not a readable refs pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()) if folder.is_dir() else []
    return ", ".join(names) or "nothing"


def load_refer(root: str | Path, dataset: str, split: str = "val") -> list[Sample]:
    """All (ref, sentence) samples of `split` (e.g. val, testA, testB; refcocog: val, test) of
    `dataset` (refcoco, refcoco+ or refcocog) under LISA's refer_seg folder `root`."""
    root = Path(root)
    if dataset not in REFS_FILES:
        raise DatasetError(f"unknown RefCOCO dataset {dataset!r}; choose one of {', '.join(REFS_FILES)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such refer_seg folder")
    ds_dir = root / dataset
    if not ds_dir.is_dir():
        raise DatasetError(f"{root}: no {dataset}/ folder (found: {_listing(root)}); "
                           "the root is LISA's refer_seg folder")
    refs_path = ds_dir / REFS_FILES[dataset]
    if not refs_path.is_file():
        raise DatasetError(f"{refs_path}: no such refs pickle ({ds_dir} holds: {_listing(ds_dir)})")
    inst_path = ds_dir / "instances.json"
    if not inst_path.is_file():
        raise DatasetError(f"{inst_path}: no such instances file ({ds_dir} holds: {_listing(ds_dir)})")

    refs = load_refs(refs_path)
    try:
        splits = sorted({str(r["split"]) for r in refs})
        selected = [r for r in refs if r["split"] == split]
    except KeyError:
        raise DatasetError(f"{refs_path}: a ref lacks its 'split'") from None
    if not selected:
        raise DatasetError(f"{refs_path}: no refs in split {split!r} (splits present: {', '.join(splits) or 'none'})")

    images, anns, _ = read_instances(inst_path, "instances file")
    image_dir = root / IMAGES_SUBDIR
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: no such image folder (the COCO train2014 images go there)")

    samples: list[Sample] = []
    seen: set[str] = set()
    checked: set[int] = set()
    for ref in selected:
        try:
            ref_id, ann_id, image_id, sentences = ref["ref_id"], ref["ann_id"], ref["image_id"], ref["sentences"]
        except KeyError as exc:
            raise DatasetError(f"{refs_path}: a ref lacks {exc}") from None
        ann = anns.get(ann_id)
        if ann is None:
            raise DatasetError(f"{inst_path}: annotation {ann_id} (ref {ref_id}) is not in the instances file")
        if image_id not in images:
            raise DatasetError(f"{inst_path}: image {image_id} (ref {ref_id}) is not in the instances file")
        if ann.get("image_id") != image_id:
            raise DatasetError(f"{inst_path}: ref {ref_id} names image {image_id}, but its annotation {ann_id} "
                               f"belongs to image {ann.get('image_id')}")
        img = images[image_id]
        try:
            image_path = image_dir / img["file_name"]
            height, width = int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{inst_path}: image {image_id} lacks a file_name, height or width ({exc!r})") from None
        if image_id not in checked:
            if not image_path.is_file():
                raise DatasetError(f"{image_path}: no such image (ref {ref_id})")
            checked.add(image_id)
        load_gt = AnnotationsGroundTruth(image_path, f"{dataset}/instances.json", height, width, (ann,), ())
        for sent in sentences:
            try:
                sent_id, text = sent["sent_id"], sent["sent"]
            except (KeyError, TypeError):
                raise DatasetError(f"{refs_path}: ref {ref_id} has a sentence without 'sent_id' and 'sent'") from None
            sample_id = f"{ref_id}-{sent_id}"
            if sample_id in seen:
                raise DatasetError(f"{refs_path}: sample id {sample_id} (ref-sentence) occurs twice")
            seen.add(sample_id)
            meta = {"dataset": dataset, "split": split, "ref_id": ref_id, "sent_id": sent_id, "ann_id": ann_id,
                    "image_id": image_id, "category_id": ref.get("category_id"), "raw": sent.get("raw", text)}
            samples.append(Sample(sample_id, image_path, text, load_gt, meta))
    return samples
