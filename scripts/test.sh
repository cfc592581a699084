#!/usr/bin/env bash
# Install into ./.venv (torch's local CPU build first, so no CUDA build is pulled) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q -e ".[dev]"
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected: failing" >&2
  exit 1
fi
exit "$status"
