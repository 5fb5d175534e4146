#!/usr/bin/env bash
# Set up .venv (CPU torch from the local wheel, everything else under the torch constraint) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# where the CPU torch wheel lies on this project's machines (no-op elsewhere)
if [ -z "${PIP_FIND_LINKS:-}" ] && [ -d /opt/wheels ]; then export PIP_FIND_LINKS=/opt/wheels; fi
.venv/bin/pip install -q torch==2.13.0
PIP_CONSTRAINT="$PWD/constraints.txt" .venv/bin/pip install -q -e ".[torch,dist,test,train,web]"
exec .venv/bin/pytest -q "$@"
