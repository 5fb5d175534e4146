"""The procedural `shapes` domain: scenes with scene graphs, checked queries, splits by seed (docs/shapes.md).

`load_dataset("shapes", ROOT, "test")` lists `ROOT/test/`, writing it first when it is missing, shorter than
asked (`"test:200"` asks for the first 200 samples, `"test:500-1000"` for samples 500..999) or drawn by another
version of the generator (`generate.VERSION`).
A split folder is a plain manifest (`manifest.jsonl`, `images/`, `masks/`, `scenes/`), so `--dataset
manifest --root ROOT/test` and any other tool read the same samples.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from rsagent.core.errors import DatasetError
from rsagent.core.image import save_image, save_mask
from rsagent.data.base import Sample
from rsagent.data.shapes.generate import DEFAULT_SIZES, SPLITS, VERSION, ShapesConfig, ShapesSample, generate

INFO = "shapes.json"
DEFAULT_ROOT = Path(os.environ.get("RSAGENT_SHAPES_ROOT", Path.home() / ".cache" / "rsagent" / "shapes"))

__all__ = ["DEFAULT_ROOT", "SPLITS", "ShapesConfig", "ShapesSample", "generate", "load_shapes", "parse_split",
           "write_split"]


def parse_split(split: str | None) -> tuple[str, int, int]:
    """Samples [start, stop) of a split: "test" -> ("test", 0, its default size); "train:20000" -> ("train", 0,
    20000); "test:500-1000" -> ("test", 500, 1000), the 500 samples after the first 500 (scenes held out
    from a run that used "test:500")."""
    name, _, count = (split or "test").partition(":")
    if name not in SPLITS:
        raise DatasetError(f"unknown shapes split {name!r}; splits: {', '.join(SPLITS)} "
                           "(optionally SPLIT:N or SPLIT:START-STOP)")
    first, dash, last = count.partition("-")
    try:
        start, stop = (int(first), int(last)) if dash else (0, int(count) if count else DEFAULT_SIZES[name])
    except ValueError:
        raise DatasetError(f"shapes split {split!r}: after ':' give a count N or a range START-STOP of "
                           "integers") from None
    if stop < 1 or not 0 <= start < stop:
        raise DatasetError(f"shapes split {split!r}: the count must be at least 1 and a range START-STOP must "
                           "have 0 <= START < STOP")
    return name, start, stop


def write_split(out: str | Path, split: str, n: int, config: ShapesConfig = ShapesConfig()) -> Path:
    """Write samples 0..n-1 of `split` to `out` in the manifest layout (atomically: a reader never sees half)."""
    out = Path(out)
    if split not in SPLITS:
        raise DatasetError(f"unknown shapes split {split!r}; splits: {', '.join(SPLITS)}")
    if out.exists() and any(out.iterdir()) and not (out / INFO).is_file():
        raise DatasetError(f"{out}: the folder exists and is not a shapes split; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for sub in ("images", "masks", "scenes"):
            (tmp / sub).mkdir()
        lines = []
        for index in range(n):
            s = generate(split, index, config)
            save_image(tmp / "images" / f"{s.sample_id}.png", s.scene.image)
            save_mask(tmp / "masks" / f"{s.sample_id}.png", s.mask)
            (tmp / "scenes" / f"{s.sample_id}.json").write_text(json.dumps(s.scene.graph()))
            lines.append(json.dumps({**s.record(), "image": f"images/{s.sample_id}.png",
                                     "mask": f"masks/{s.sample_id}.png", "scene": f"scenes/{s.sample_id}.json"}))
        (tmp / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        (tmp / INFO).write_text(json.dumps({"split": split, "n": n, "config": config.to_dict()}, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_shapes(root: str | Path | None, split: str | None = None) -> list[Sample]:
    """Samples [start, stop) of a split under `root` (default: DEFAULT_ROOT); the folder holds samples 0..stop-1,
    written first when it holds fewer or was drawn by another generator version (then rewritten whole, with
    its stored scene config and mix, and a warning: its samples would not be this version's)."""
    from rsagent.data.manifest import load_manifest

    name, start, n = parse_split(split)
    folder = Path(root if root is not None else DEFAULT_ROOT) / name
    info = folder / INFO
    stored = json.loads(info.read_text()) if info.is_file() else None
    have = stored["n"] if stored else 0
    if stored and stored["config"].get("version") != VERSION:
        warnings.warn(f"{folder} was drawn by shapes generator version {stored['config'].get('version')}, this is "
                      f"version {VERSION}: rewriting it", stacklevel=2)
        have = 0
    if have < n:
        config = ShapesConfig.from_dict(stored["config"]) if stored else ShapesConfig()
        write_split(folder, name, n, config)
    return load_manifest(folder)[start:n]
