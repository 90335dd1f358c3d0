#!/usr/bin/env bash
# Create ./.venv (if needed) and install cliplab with its pinned dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision are pinned (pyproject.toml): open_clip needs a torchvision built for the same torch.
.venv/bin/python -m pip install -q -e ".[test,deploy]"
