#!/usr/bin/env bash
# Install into ./.venv (torch's local CPU build first) and run the digits demo: plain vs L2R vs IEG.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q -e ".[demo]"
.venv/bin/python -m iegkit.demo "$@"
