"""YOLO-seg polygon labels (e.g. Ultralytics' coco128-seg) as segmentation targets.

Layout: `ROOT/images/<split>/<stem>.jpg` and `ROOT/labels/<split>/<stem>.txt`, one instance per line:
`class x1 y1 x2 y2 ...` with coordinates normalised to [0, 1]. Class ids follow COCO's 80 classes.
One target per instance; sample id `<stem>-<line index>`; query: "the <class name>". The default split
is the only folder under `labels/`, else `train2017`. See docs/datasets.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsagent.core.errors import DatasetError
from rsagent.core.image import image_size
from rsagent.core.mask import GroundTruth, polygons_to_mask
from rsagent.data.base import Sample
from rsagent.data.coco import check_size

COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
)
COCO80 = tuple(name.replace("_", " ") for name in COCO80.split())


@dataclass(frozen=True)
class PolygonTarget:
    sample_id: str
    image_path: Path
    class_id: int  # checked to be one of COCO80's
    polygon: np.ndarray  # (N, 2), normalised [0, 1]
    width: int
    height: int
    line: int  # the line's index in its label file

    @property
    def category(self) -> str:
        return COCO80[self.class_id]

    @property
    def query(self) -> str:
        return f"the {self.category}"

    def pixel_polygon(self) -> np.ndarray:
        """The polygon in image pixels: the one computation every rasterisation of it starts from."""
        return self.polygon * np.array([self.width, self.height])

    def ground_truth(self) -> GroundTruth:
        return GroundTruth(polygons_to_mask([self.pixel_polygon()], self.height, self.width))

    def load_gt(self, height: int, width: int) -> GroundTruth:
        """`Sample.load_gt`: the polygon drawn at the header's size, which the decoded image must have."""
        check_size(self.image_path, height, width, self.height, self.width, "its header")
        return self.ground_truth()

    @property
    def area_fraction(self) -> float:
        """Shoelace area of the polygon as a fraction of the image (cheap, no rasterising)."""
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def default_split(root: str | Path) -> str:
    """The only split folder under `ROOT/labels/`, else `train2017`."""
    labels = Path(root) / "labels"
    found = sorted(p.name for p in labels.iterdir() if p.is_dir()) if labels.is_dir() else []
    return found[0] if len(found) == 1 else "train2017"


def _header_size(image_path: Path) -> tuple[int, int]:
    try:
        return image_size(image_path)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DatasetError(f"{image_path}: not a readable image ({exc})") from None


def _read_polygons(label_file: Path) -> list[tuple[int, int, np.ndarray]]:
    """(line index, class id, flat coordinates) of each polygon line; shorter lines are skipped."""
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{label_file}: cannot read the label file ({exc})") from None
    found = []
    for index, line in enumerate(lines):
        values = line.split()
        if len(values) < 7:
            continue  # fewer than 3 vertices: not a polygon (YOLO detection line or blank)
        where = f"{label_file}: line {index + 1}"
        try:
            class_id, coords = float(values[0]), np.asarray(values[1:], np.float64)
        except ValueError:
            raise DatasetError(f"{where}: expected 'class x1 y1 x2 y2 ...' numbers, got {line[:60]!r}") from None
        if not class_id.is_integer() or not 0 <= class_id < len(COCO80):
            raise DatasetError(f"{where}: class {values[0]} is not one of COCO's 80 class ids (0..79)")
        if not np.isfinite(coords).all():
            raise DatasetError(f"{where}: coordinates must be finite numbers")
        found.append((index, int(class_id), coords))
    return found


def load_yolo_seg(root: str | Path, split: str = "train2017") -> list[PolygonTarget]:
    """All polygon instances of a split, in file order (sorted stems, then line order).

    A label file without its image is an error unless the image is simply absent from the folder
    (coco128-seg ships two such label files): those are reported with a warning, never hidden.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such YOLO-seg dataset folder")
    labels_dir, images_dir = root / "labels" / split, root / "images" / split
    if not labels_dir.is_dir() or not images_dir.is_dir():
        found = sorted(p.name for p in (root / "labels").glob("*")) if (root / "labels").is_dir() else []
        raise DatasetError(f"{root}: expected labels/{split}/ and images/{split}/ (label splits found: "
                           f"{', '.join(found) or 'none'})")
    label_files = sorted(labels_dir.glob("*.txt"))
    if not label_files:
        raise DatasetError(f"{labels_dir}: no .txt label files")
    targets, missing = [], []
    for label_file in label_files:
        image_path = min(images_dir.glob(label_file.stem + ".*"), default=None)  # sorted: a fixed choice
        if image_path is None:
            missing.append(label_file.stem)
            continue
        height, width = _header_size(image_path)
        for index, class_id, coords in _read_polygons(label_file):
            targets.append(PolygonTarget(f"{label_file.stem}-{index}", image_path, class_id,
                                         coords[: len(coords) // 2 * 2].reshape(-1, 2), width, height, index))
    if missing:
        warnings.warn(f"{len(missing)} label files in {labels_dir} have no image and were not loaded: "
                      f"{', '.join(missing)}", stacklevel=2)
    return targets


def load_yoloseg(root: str | Path, split: str | None = None) -> list[Sample]:
    """`load_dataset("yoloseg")`: one sample per polygon instance, in `load_yolo_seg`'s order."""
    split = split or default_split(root)
    return [Sample(t.sample_id, t.image_path, t.query, t.load_gt,
                   {"stem": t.image_path.stem, "line": t.line, "class_id": t.class_id, "category": t.category,
                    "split": split})
            for t in load_yolo_seg(root, split)]
