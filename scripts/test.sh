#!/usr/bin/env bash
# Quick start 2/2: set up, then run the whole test suite (slow tests included; -m "not slow" for the fast ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
