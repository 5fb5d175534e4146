#!/usr/bin/env bash
# The toolbox on a real photo: the oracle expert (it reads the ground truth) segments a COCO128 target with
# GrabCut, 8 turns. Writes runs/demo/{mask.png,trajectory.json,turn_XX.png,index.html}.
# Needs ../shared/data (or DATA=path/to/coco128-seg).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data/coco128-seg}"
STEM="${STEM:-000000000009}"
LINE="${LINE:-2}"
mkdir -p runs/demo
QUERY=$(.venv/bin/python - "$DATA" "$STEM" "$LINE" <<'PY'
import sys, warnings
from rsagent.data.yoloseg import load_yolo_seg
from rsagent.core.image import save_mask
warnings.simplefilter("ignore")
root, stem, line = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = next(t for t in load_yolo_seg(root) if t.sample_id == f"{stem}-{line}")
save_mask("runs/demo/gt.png", t.ground_truth().mask)
print(t.query)
PY
)
exec .venv/bin/rsagent segment "$DATA/images/train2017/$STEM.jpg" "$QUERY" --policy oracle \
    --gt-mask runs/demo/gt.png --segmenter grabcut --max-turns 8 --out runs/demo "$@"
