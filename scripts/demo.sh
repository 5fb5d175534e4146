#!/usr/bin/env bash
# The main job: the trained shapes agent shipped with rsagent segments a shapes scene it never trained on
# (sample 0 of the `test` split; pass --seed N for another, --query TEXT to ask something else) with GrabCut
# on the CPU, in up to 8 turns. Writes runs/demo-agent/{mask.png,trajectory.json,turn_XX.png,index.html,
# image.png,gt.png} and prints turns, IoU against the scene's ground truth, seconds and the folder.
# Extra arguments go to `rsagent demo`. The oracle on a real COCO photo: scripts/demo_oracle.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/rsagent demo "$@"
