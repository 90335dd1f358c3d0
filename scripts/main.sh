#!/usr/bin/env bash
# Quick start 1/2: set up, then materialise the default graph (toy-vit.s0 × toyworld).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
exec .venv/bin/cliplab run "$@"
