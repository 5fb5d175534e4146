"""YOLO-seg polygon labels (e.g. Ultralytics' coco128-seg) as segmentation targets.

Layout: `ROOT/images/<split>/<stem>.jpg` and `ROOT/labels/<split>/<stem>.txt`, one instance per line:
`class x1 y1 x2 y2 ...` with coordinates normalised to [0, 1]. Class ids follow COCO's 80 classes.
One target per instance; sample id `<stem>-<line index>`; query: the class name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.core.image import image_size
from rsagent.core.mask import GroundTruth, polygons_to_mask

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
    class_id: int
    polygon: np.ndarray  # (N, 2), normalised [0, 1]
    width: int
    height: int

    @property
    def query(self) -> str:
        name = COCO80[self.class_id] if 0 <= self.class_id < len(COCO80) else f"class {self.class_id}"
        return f"the {name}"

    def ground_truth(self) -> GroundTruth:
        pts = self.polygon * np.array([self.width, self.height])
        return GroundTruth(polygons_to_mask([pts], self.height, self.width))

    @property
    def area_fraction(self) -> float:
        """Shoelace area of the polygon as a fraction of the image (cheap, no rasterising)."""
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def load_yolo_seg(root: str | Path, split: str = "train2017") -> list[PolygonTarget]:
    """All polygon instances of a split, in file order (sorted stems, then line order).

    A label file without its image is an error unless the image is simply absent from the folder
    (coco128-seg ships two such label files): those are reported with a warning, never hidden.
    """
    root = Path(root)
    labels_dir, images_dir = root / "labels" / split, root / "images" / split
    if not labels_dir.is_dir() or not images_dir.is_dir():
        found = sorted(p.name for p in (root / "labels").glob("*")) if (root / "labels").is_dir() else []
        raise RsagentError(f"{root}: expected labels/{split}/ and images/{split}/ (label splits found: {found or 'none'})")
    targets, missing = [], []
    for label_file in sorted(labels_dir.glob("*.txt")):
        image_path = next((p for p in images_dir.glob(label_file.stem + ".*")), None)
        if image_path is None:
            missing.append(label_file.stem)
            continue
        height, width = image_size(image_path)
        for index, line in enumerate(label_file.read_text().splitlines()):
            values = line.split()
            if len(values) < 7:
                continue  # fewer than 3 vertices: not a polygon (YOLO detection line or blank)
            poly = np.asarray(values[1:], np.float64)
            targets.append(PolygonTarget(f"{label_file.stem}-{index}", image_path, int(values[0]),
                                         poly[: len(poly) // 2 * 2].reshape(-1, 2), width, height))
    if missing:
        warnings.warn(f"{len(missing)} label files in {labels_dir} have no image and were not loaded: "
                      f"{', '.join(missing)}", stacklevel=2)
    return targets
