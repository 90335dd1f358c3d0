"""What the benchmarks share: an artifact root with toyworld and a random toy CLIP, and a child process to time in.

Every row of a benchmark runs in a fresh Python (`run_child`), so peak RSS (wait4) is that row's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The start of a child script that materialises assets of toy-vit.s0 × toyworld: argv = [root, device].
TOY_PARTITION = """
import json, sys
from dagster import DagsterInstance, materialize
from assets.partitions import partition_key
from pipelines.definitions import resources_from_env
from resources.models import ModelZoo
root = sys.argv[1]
inst = DagsterInstance.ephemeral()
inst.add_dynamic_partitions("model", ["toy-vit.s0"]); inst.add_dynamic_partitions("dataset", ["toyworld"])
res = resources_from_env(root)
res["zoo"] = ModelZoo(artifacts_root=root, device=sys.argv[2])
key = partition_key("toy-vit.s0", "toyworld")
"""


def prepare_root(n: int) -> Path:
    """An artifact root with toyworld (n val images) and a toy CLIP checkpoint (random init: speed does not depend on weights)."""
    import pyarrow.parquet  # noqa: F401  (imported before torch: keeps the parent light)

    from cliplab.toy import toyworld
    from cliplab.toy.clip import build_toy_clip
    from resources.datasets import TOYWORLD_SCHEMA, toyworld_table
    from resources.models import as_weights, save_checkpoint
    from resources.store import ArtifactStore

    root = Path(tempfile.mkdtemp(prefix=f"cliplab-bench-{n}-")) / "artifacts"
    store = ArtifactStore(root=str(root))
    with store.writer("toyworld", TOYWORLD_SCHEMA, split="val") as w:
        for start in range(0, n, 1000):
            w.write_table(toyworld_table(toyworld.generate(0, "val", min(1000, n - start), start=start), "val"))
    import torch

    torch.manual_seed(0)
    save_checkpoint(as_weights(build_toy_clip(), "toy-vit"), root / "checkpoints" / "toy-vit.s0")
    return root


def run_child(code: str, *args: str) -> tuple[dict, float]:
    """Run `code` in a fresh Python; (its last stdout line as JSON, its peak RSS in MiB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark child failed (status {status}): {code.strip().splitlines()[-3:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024
