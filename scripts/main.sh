#!/usr/bin/env bash
# Quick start 1/2: set up, then materialise the default graph (toy-vit.s0 × toyworld).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
# The head-span text banks are published files (downloaded and sha256-checked on a machine with network);
# beside a checkout that has ../shared/data they are read from there.
if [ -z "${CLIPLAB_REFERENCE_DIR:-}" ] && [ -d ../shared/data/text-banks ]; then
  export CLIPLAB_REFERENCE_DIR=$(cd ../shared/data && pwd)
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # the head labeler's sentence model ships in a pip package
exec .venv/bin/cliplab run "$@"
