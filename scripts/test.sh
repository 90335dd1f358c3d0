#!/usr/bin/env bash
# Quick start 2/2: set up, then run the test suite on 2 pytest-xdist workers (a test file to one worker at a time, in
# the order tests/conftest.py gives: longest first), slow tests included, the acceptance tier left out:
# `bash scripts/test.sh -m acceptance -n 0` runs that tier (the tests of the default toy CLIP, which they train
# first); -m "not slow" runs the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not acceptance" "$@"
