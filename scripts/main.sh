#!/usr/bin/env bash
# Quick start 1/2: set up, then materialise the default graph (toy-vit.s0 × toyworld). `cliplab` itself sets up
# its environment (DAGSTER_HOME, the published banks of ../shared/data): pipelines/environment.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cliplab run "$@"
